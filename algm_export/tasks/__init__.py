"""The tasks layer: one workflow per module (validate, bench, build, predict, report, demo, plugins,
and the pictures they draw), on top of artifacts and runtimes. The command line (`cli`) calls them;
a task never imports another task, except `demo`, which composes them.
"""
