/*
 * Helpers shared by the AlgmClap and AlgmGbm TensorRT plugins: names, field parsing, logging.
 * Only TensorRT interface headers are used (no libnvinfer symbols), so the plugin library loads
 * into TensorRT >= 10 and TensorRT-RTX alike.
 */
#ifndef ALGM_PLUGIN_COMMON_H
#define ALGM_PLUGIN_COMMON_H

#include <NvInferRuntime.h>

#include <cstdint>
#include <string>
#include <vector>

namespace algm
{
namespace plugin
{

constexpr char const* kPluginNamespace = "algm";
constexpr char const* kPluginVersion = "1";

//! Stores the logger finder TensorRT hands to the library (setLoggerFinder).
void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;

//! Logs through TensorRT's logger when its ABI is known to match these headers, else to stderr
//! (errors and warnings only).
void log(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept;

inline void logError(std::string const& message) noexcept
{
    log(nvinfer1::ILogger::Severity::kERROR, message);
}

//! Reads an integer plugin field (any integer type, first element).
bool readIntField(nvinfer1::PluginField const& field, int32_t& out) noexcept;

//! Reads a floating-point plugin field (float32 or float64, first element; integers accepted).
bool readFloatField(nvinfer1::PluginField const& field, float& out) noexcept;

//! Reads a string plugin field (kCHAR; stops at the first NUL or at `length`).
bool readStringField(nvinfer1::PluginField const& field, std::string& out) noexcept;

//! Maps a TensorRT token dtype to AlgmDtype; -1 when unsupported.
int32_t toAlgmDtype(nvinfer1::DataType type) noexcept;

//! Checks the plugin_version / plugin_namespace fields, if present. Returns false (and logs) on mismatch.
bool checkVersionFields(nvinfer1::PluginField const& field, char const* pluginName) noexcept;

//! A plugin field descriptor list (name, type) for IPluginCreatorV3One::getFieldNames.
class FieldList
{
public:
    void add(char const* name, nvinfer1::PluginFieldType type, int32_t length = 1)
    {
        mFields.emplace_back(name, nullptr, type, length);
        mCollection.nbFields = static_cast<int32_t>(mFields.size());
        mCollection.fields = mFields.data();
    }

    nvinfer1::PluginFieldCollection const* collection() const noexcept
    {
        return &mCollection;
    }

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mCollection{};
};

} // namespace plugin
} // namespace algm

#endif // ALGM_PLUGIN_COMMON_H
