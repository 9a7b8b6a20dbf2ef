/*
 * Helpers shared by the AlgmClap and AlgmGbm TensorRT plugins: names, field parsing, logging, and
 * the IPluginV3 / IPluginCreatorV3One plumbing both ops share (AlgmPluginBase, AlgmPluginCreatorBase).
 * Only TensorRT interface headers are used (no libnvinfer symbols), so the plugin library loads
 * into TensorRT >= 10 and TensorRT-RTX alike.
 */
#ifndef ALGM_PLUGIN_COMMON_H
#define ALGM_PLUGIN_COMMON_H

#include <NvInferRuntime.h>

#include <cstdint>
#include <exception>
#include <string>
#include <vector>

namespace algm
{
namespace plugin
{

constexpr char const* kPluginNamespace = "algm";
constexpr char const* kPluginVersion = "1";        //!< static token mode (capacities)
constexpr char const* kDynamicPluginVersion = "2"; //!< dynamic token mode (data-dependent token slots)

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

//! True for the optional "plugin_version" / "plugin_namespace" fields every creator accepts.
bool isVersionFieldName(char const* name) noexcept;

//! Checks the plugin_version / plugin_namespace fields, if present, against `pluginVersion` and the
//! namespace. Returns false (and logs) on mismatch.
bool checkVersionFields(nvinfer1::PluginField const& field, char const* pluginName, char const* pluginVersion) noexcept;

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

//! What a creator's field visitor made of one plugin field (see visitPluginFields).
enum class FieldStatus
{
    kKNOWN,   //!< the op's field, read
    kUNKNOWN, //!< not a field of the op: warned about and ignored
    kERROR,   //!< the op's field, unreadable (the visitor logged why): creation fails
};

//! Walks the named fields of `fc` in order: checks plugin_version / plugin_namespace (checkVersionFields)
//! and hands every other field to `visit(field) -> FieldStatus`. Returns false on a version mismatch
//! or when `visit` reports kERROR.
template <typename Visit>
bool visitPluginFields(nvinfer1::PluginFieldCollection const& fc, char const* pluginName, char const* pluginVersion,
    std::string const& layer, Visit&& visit)
{
    for (int32_t i = 0; i < fc.nbFields; ++i)
    {
        nvinfer1::PluginField const& f = fc.fields[i];
        if (f.name == nullptr)
        {
            continue;
        }
        if (!checkVersionFields(f, pluginName, pluginVersion))
        {
            return false;
        }
        if (isVersionFieldName(f.name))
        {
            continue;
        }
        FieldStatus const status = visit(f);
        if (status == FieldStatus::kERROR)
        {
            return false;
        }
        if (status == FieldStatus::kUNKNOWN)
        {
            log(nvinfer1::ILogger::Severity::kWARNING, layer + ": ignoring unknown field " + f.name);
        }
    }
    return true;
}

//! The IPluginV3 plumbing both ops share. `Derived` provides `static constexpr char const* kName`,
//! `kVersion` ("1" static, "2" dynamic token mode), `static constexpr int32_t kNbOutputs`, a copy constructor, and the build/runtime methods that
//! differ per op; it fills mMetadata and the serialised fields (mFields, then publishFields()).
template <typename Derived>
class AlgmPluginBase : public nvinfer1::IPluginV3,
                       public nvinfer1::IPluginV3OneCore,
                       public nvinfer1::IPluginV3OneBuild,
                       public nvinfer1::IPluginV3OneRuntime
{
public:
    AlgmPluginBase& operator=(AlgmPluginBase const&) = delete;
    ~AlgmPluginBase() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override
    {
        switch (type)
        {
        case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
        case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
        case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
        }
        return nullptr;
    }

    nvinfer1::IPluginV3* clone() noexcept override
    {
        try
        {
            return new Derived(static_cast<Derived const&>(*this));
        }
        catch (std::exception const& e)
        {
            logError(std::string(Derived::kName) + ": clone failed: " + e.what());
        }
        return nullptr;
    }

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override
    {
        return Derived::kName;
    }

    char const* getPluginVersion() const noexcept override
    {
        return Derived::kVersion;
    }

    char const* getPluginNamespace() const noexcept override
    {
        return kPluginNamespace;
    }

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override
    {
        return Derived::kNbOutputs;
    }

    char const* getMetadataString() noexcept override
    {
        return mMetadata.c_str();
    }

    // IPluginV3OneRuntime
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept override
    {
        return clone();
    }

    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override
    {
        return &mFieldCollection;
    }

protected:
    AlgmPluginBase() = default;

    //! Copies the interfaces only: the serialised fields point into the copy's own attributes,
    //! so the derived copy constructor rebuilds them.
    AlgmPluginBase(AlgmPluginBase const& other)
        : nvinfer1::IPluginV3(other)
        , nvinfer1::IPluginV3OneCore(other)
        , nvinfer1::IPluginV3OneBuild(other)
        , nvinfer1::IPluginV3OneRuntime(other)
    {
    }

    //! Points the serialised field collection at mFields (call after filling mFields).
    void publishFields() noexcept
    {
        mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
        mFieldCollection.fields = mFields.data();
    }

    std::string mMetadata;
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

//! The IPluginCreatorV3One plumbing both ops share: name/version/namespace, the field list
//! (the derived constructor fills mFieldNames) and createPlugin's checks and exception guard.
class AlgmPluginCreatorBase : public nvinfer1::IPluginCreatorV3One
{
public:
    ~AlgmPluginCreatorBase() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

protected:
    AlgmPluginCreatorBase(char const* pluginName, char const* pluginVersion) noexcept
        : mPluginName(pluginName)
        , mPluginVersion(pluginVersion)
    {
    }

    //! Builds the plugin from a non-null field collection; `layer` is "<name> '<layer name>'" for
    //! messages. May throw (createPlugin logs it); returns nullptr after logging on bad fields.
    virtual nvinfer1::IPluginV3* createFromFields(
        std::string const& layer, nvinfer1::PluginFieldCollection const& fc) = 0;

    char const* mPluginName;
    char const* mPluginVersion;
    FieldList mFieldNames;
};

} // namespace plugin
} // namespace algm

#endif // ALGM_PLUGIN_COMMON_H
