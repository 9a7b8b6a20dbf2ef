// Helpers shared by the algm TensorRT plugins: see algmPluginCommon.h.
#include "algmPluginCommon.h"

#include "algmKernels.h"

#include <atomic>
#include <cstdio>
#include <cstring>
#include <exception>
#include <type_traits>

#if !defined(_WIN32)
#include <dlfcn.h>
#endif

namespace algm
{
namespace plugin
{
namespace
{

std::atomic<nvinfer1::ILoggerFinder*> gLoggerFinder{nullptr};

// ILogger and ILoggerFinder changed their virtual layout between TensorRT 10 (plain classes)
// and TensorRT 11 / TensorRT-RTX (IVersionedInterface). The plugin interfaces did not. Use the
// finder only when the TensorRT library that loaded us has the layout these headers declare.
constexpr bool kHeadersVersionedLogger = std::is_base_of<nvinfer1::IVersionedInterface, nvinfer1::ILogger>::value;

// 1: versioned logger ABI, 0: TensorRT 10 logger ABI, -1: unknown.
int runtimeLoggerAbi() noexcept
{
#if defined(_WIN32)
    return kHeadersVersionedLogger ? 1 : 0;
#else
    struct Candidate
    {
        char const* soname;
        int abi;
    };
    static Candidate const candidates[] = {
        {"libtensorrt_rtx.so.1", 1},
        {"libnvinfer.so.11", 1},
        {"libnvinfer_lean.so.11", 1},
        {"libnvinfer.so.12", 1},
        {"libnvinfer_lean.so.12", 1},
        {"libnvinfer.so.10", 0},
        {"libnvinfer_lean.so.10", 0},
    };
    for (auto const& c : candidates)
    {
        void* handle = dlopen(c.soname, RTLD_LAZY | RTLD_NOLOAD);
        if (handle != nullptr)
        {
            dlclose(handle);
            return c.abi;
        }
    }
    return -1;
#endif
}

bool loggerUsable() noexcept
{
    static int const abi = runtimeLoggerAbi();
    return abi == (kHeadersVersionedLogger ? 1 : 0);
}

} // namespace

void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept
{
    gLoggerFinder.store(finder);
}

void log(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept
{
    try
    {
        std::string const text = std::string("[algm plugins] ") + message;
        nvinfer1::ILoggerFinder* finder = gLoggerFinder.load();
        if (finder != nullptr && loggerUsable())
        {
            nvinfer1::ILogger* logger = finder->findLogger();
            if (logger != nullptr)
            {
                logger->log(severity, text.c_str());
                return;
            }
        }
        if (severity <= nvinfer1::ILogger::Severity::kWARNING)
        {
            std::fprintf(stderr, "%s\n", text.c_str());
        }
    }
    catch (...)
    {
    }
}

bool readIntField(nvinfer1::PluginField const& field, int32_t& out) noexcept
{
    if (field.data == nullptr || field.length < 1)
    {
        return false;
    }
    switch (field.type)
    {
    case nvinfer1::PluginFieldType::kINT8: out = *static_cast<int8_t const*>(field.data); return true;
    case nvinfer1::PluginFieldType::kINT16: out = *static_cast<int16_t const*>(field.data); return true;
    case nvinfer1::PluginFieldType::kINT32: out = *static_cast<int32_t const*>(field.data); return true;
    case nvinfer1::PluginFieldType::kINT64:
    {
        int64_t const v = *static_cast<int64_t const*>(field.data);
        if (v < INT32_MIN || v > INT32_MAX)
        {
            return false;
        }
        out = static_cast<int32_t>(v);
        return true;
    }
    default: return false;
    }
}

bool readFloatField(nvinfer1::PluginField const& field, float& out) noexcept
{
    if (field.data == nullptr || field.length < 1)
    {
        return false;
    }
    switch (field.type)
    {
    case nvinfer1::PluginFieldType::kFLOAT32: out = *static_cast<float const*>(field.data); return true;
    case nvinfer1::PluginFieldType::kFLOAT64: out = static_cast<float>(*static_cast<double const*>(field.data)); return true;
    default:
    {
        int32_t v = 0;
        if (readIntField(field, v))
        {
            out = static_cast<float>(v);
            return true;
        }
        return false;
    }
    }
}

std::string prefixRangeMessage(std::string const& layer, int32_t numPrefix)
{
    return layer + ": num_prefix=" + std::to_string(numPrefix) + " is not supported: this plugin library takes 0 to "
        + std::to_string(algmMaxPrefix())
        + " prefix tokens (class, distillation and register tokens in front of the patches); export with "
          "fewer prefix tokens or rebuild the library with a larger kMaxPrefix (plugins/common/algmCommon.h)";
}

bool readStringField(nvinfer1::PluginField const& field, std::string& out) noexcept
{
    try
    {
        if (field.type != nvinfer1::PluginFieldType::kCHAR)
        {
            return false;
        }
        out.clear();
        if (field.data == nullptr)
        {
            return true;
        }
        char const* s = static_cast<char const*>(field.data);
        for (int32_t i = 0; i < field.length && s[i] != '\0'; ++i)
        {
            out.push_back(s[i]);
        }
        return true;
    }
    catch (...)
    {
        return false;
    }
}

int32_t toAlgmDtype(nvinfer1::DataType type) noexcept
{
    switch (type)
    {
    case nvinfer1::DataType::kFLOAT: return ALGM_DTYPE_FLOAT32;
    case nvinfer1::DataType::kHALF: return ALGM_DTYPE_FLOAT16;
    default: return -1;
    }
}

bool isVersionFieldName(char const* name) noexcept
{
    return name != nullptr && (std::strcmp(name, "plugin_version") == 0 || std::strcmp(name, "plugin_namespace") == 0);
}

bool checkVersionFields(nvinfer1::PluginField const& field, char const* pluginName, char const* pluginVersion) noexcept
{
    if (field.name == nullptr)
    {
        return true;
    }
    bool const isVersion = std::strcmp(field.name, "plugin_version") == 0;
    bool const isNamespace = std::strcmp(field.name, "plugin_namespace") == 0;
    if (!isVersion && !isNamespace)
    {
        return true;
    }
    std::string value;
    if (!readStringField(field, value))
    {
        return true; // not a string: ignore, the registry already matched name/version/namespace
    }
    char const* expected = isVersion ? pluginVersion : kPluginNamespace;
    if (!value.empty() && value != expected)
    {
        logError(std::string(pluginName) + ": field " + field.name + " is '" + value + "', this library implements '"
            + expected + "'");
        return false;
    }
    return true;
}

// ---------------------------------------------------------------------------------------------- creator base

char const* AlgmPluginCreatorBase::getPluginName() const noexcept
{
    return mPluginName;
}

char const* AlgmPluginCreatorBase::getPluginVersion() const noexcept
{
    return mPluginVersion;
}

char const* AlgmPluginCreatorBase::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

nvinfer1::PluginFieldCollection const* AlgmPluginCreatorBase::getFieldNames() noexcept
{
    return mFieldNames.collection();
}

nvinfer1::IPluginV3* AlgmPluginCreatorBase::createPlugin(
    char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase /*phase*/) noexcept
{
    try
    {
        std::string const layer = std::string(mPluginName) + " '" + (name ? name : "") + "'";
        if (fc == nullptr || (fc->nbFields > 0 && fc->fields == nullptr))
        {
            logError(layer + ": no plugin fields");
            return nullptr;
        }
        return createFromFields(layer, *fc);
    }
    catch (std::exception const& e)
    {
        logError(std::string(mPluginName) + ": createPlugin failed: " + e.what());
    }
    return nullptr;
}

} // namespace plugin
} // namespace algm
