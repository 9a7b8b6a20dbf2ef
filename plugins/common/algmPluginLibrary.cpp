/*
 * Entry points of libalgm_plugins.so, found by IPluginRegistry::loadLibrary
 * (Python: get_plugin_registry().load_library(path); trtexec: --dynamicPlugins=path).
 * There is deliberately no static self-registration (REGISTER_TENSORRT_PLUGIN): the creators
 * are registered by TensorRT through getCreators only.
 */
#include "../algmClap/algmClapPlugin.h"
#include "../algmGbm/algmGbmPlugin.h"
#include "algmPluginCommon.h"

#include <NvInferRuntime.h>

#if defined(_WIN32)
#define ALGM_PLUGIN_API __declspec(dllexport)
#else
#define ALGM_PLUGIN_API __attribute__((visibility("default")))
#endif

extern "C" {

ALGM_PLUGIN_API void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    algm::plugin::setLoggerFinder(finder);
}

ALGM_PLUGIN_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static algm::plugin::AlgmClapPluginCreator clapCreator;
    static algm::plugin::AlgmGbmPluginCreator gbmCreator;
    static algm::plugin::AlgmClapDynamicPluginCreator clapDynamicCreator;
    static algm::plugin::AlgmGbmDynamicPluginCreator gbmDynamicCreator;
    static nvinfer1::IPluginCreatorInterface* const creators[]
        = {&clapCreator, &gbmCreator, &clapDynamicCreator, &gbmDynamicCreator};
    nbCreators = static_cast<int32_t>(sizeof(creators) / sizeof(creators[0]));
    return creators;
}

} // extern "C"
