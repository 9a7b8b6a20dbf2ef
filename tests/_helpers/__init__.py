"""Helpers shared by several test modules (and scripts/fuzz_artifacts.py); not tests themselves.

    plugins        margins, duplicated/separated token builders, the plugin-library build (once)
    trt_build      tiny export folders and Python stand-ins for the algm TensorRT plugins
    fuzz_artifacts the artifact fuzzer: mutations, commands, the per-case runner
    models         tiny_segmenter: the seeded 6-block ViT-Ti Segmenter at 128 px most tests use
"""
