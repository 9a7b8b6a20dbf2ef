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

//! The creators' error for a num_prefix outside 0..algmMaxPrefix().
std::string prefixRangeMessage(std::string const& layer, int32_t numPrefix);

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

//! One attribute of an op, as a plugin field: its name and its member in the op's attribute struct
//! (`intMember` for a kINT32 field, else `floatMember` for a kFLOAT32 one). An op lists its fields
//! once, per token mode, in a table; the plugin serialises from it, the creator advertises and reads
//! it, and the metadata string names it (serialiseAttributes, addFieldNames, readAttributes).
template <typename Attrs>
struct AttributeField
{
    char const* name;
    int32_t Attrs::*intMember;
    float Attrs::*floatMember;

    nvinfer1::PluginFieldType type() const noexcept
    {
        return intMember != nullptr ? nvinfer1::PluginFieldType::kINT32 : nvinfer1::PluginFieldType::kFLOAT32;
    }
};

//! Points `out` at the fields of `table` inside `attrs` (the plugin's own copy: getFieldsToSerialize).
template <typename Attrs, typename Table>
void serialiseAttributes(std::vector<nvinfer1::PluginField>& out, Attrs& attrs, Table const& table)
{
    out.clear();
    for (auto const& f : table)
    {
        if (f.intMember != nullptr)
        {
            out.emplace_back(f.name, &(attrs.*f.intMember), nvinfer1::PluginFieldType::kINT32, 1);
        }
        else
        {
            out.emplace_back(f.name, &(attrs.*f.floatMember), nvinfer1::PluginFieldType::kFLOAT32, 1);
        }
    }
}

//! "<name>[ (dynamic)] field=value ..." for getMetadataString.
template <typename Attrs, typename Table>
std::string describeAttributes(char const* pluginName, bool dynamic, Attrs const& attrs, Table const& table)
{
    std::string s = std::string(pluginName) + (dynamic ? " (dynamic)" : "");
    for (auto const& f : table)
    {
        s += std::string(" ") + f.name + "="
            + (f.intMember != nullptr ? std::to_string(attrs.*f.intMember) : std::to_string(attrs.*f.floatMember));
    }
    return s;
}

//! The creator's field list: the table's fields, then the optional plugin_version / plugin_namespace.
template <typename Table>
void addFieldNames(FieldList& list, Table const& table)
{
    for (auto const& f : table)
    {
        list.add(f.name, f.type());
    }
    list.add("plugin_version", nvinfer1::PluginFieldType::kCHAR);
    list.add("plugin_namespace", nvinfer1::PluginFieldType::kCHAR);
}

//! Reads every field of `table` from `fc` into `attrs` (visitPluginFields: version fields checked,
//! unknown fields warned about). Every field is required; false after logging what is missing or
//! unreadable.
template <typename Attrs, typename Table>
bool readAttributes(nvinfer1::PluginFieldCollection const& fc, char const* pluginName, char const* pluginVersion,
    std::string const& layer, Table const& table, Attrs& attrs)
{
    std::vector<bool> seen(table.size(), false);
    bool const ok = visitPluginFields(fc, pluginName, pluginVersion, layer, [&](nvinfer1::PluginField const& f) {
        for (size_t i = 0; i < table.size(); ++i)
        {
            auto const& t = table[i];
            if (std::string(f.name) != t.name)
            {
                continue;
            }
            bool const read
                = t.intMember != nullptr ? readIntField(f, attrs.*t.intMember) : readFloatField(f, attrs.*t.floatMember);
            if (!read)
            {
                logError(layer + ": field " + t.name + (t.intMember != nullptr ? " must be an integer" : " must be a float"));
                return FieldStatus::kERROR;
            }
            seen[i] = true;
            return FieldStatus::kKNOWN;
        }
        return FieldStatus::kUNKNOWN;
    });
    if (!ok)
    {
        return false;
    }
    for (size_t i = 0; i < table.size(); ++i)
    {
        if (!seen[i])
        {
            logError(layer + ": missing field " + table[i].name);
            return false;
        }
    }
    return true;
}

//! The output shapes every merge op shares: y [B, tokens, D], size [B, tokens], assign [B, n],
//! stats [B, 2], and in the dynamic token mode the 0-D size tensor `tokens` itself (output 4).
inline void setMergeOutputShapes(nvinfer1::DimsExprs* outputs, nvinfer1::DimsExprs const& x,
    nvinfer1::IDimensionExpr const* tokens, nvinfer1::IDimensionExpr const* patches, bool withSizeTensor,
    nvinfer1::IExprBuilder& exprBuilder) noexcept
{
    outputs[0].nbDims = 3;
    outputs[0].d[0] = x.d[0];
    outputs[0].d[1] = tokens;
    outputs[0].d[2] = x.d[2];
    outputs[1].nbDims = 2;
    outputs[1].d[0] = x.d[0];
    outputs[1].d[1] = tokens;
    outputs[2].nbDims = 2;
    outputs[2].d[0] = x.d[0];
    outputs[2].d[1] = patches;
    outputs[3].nbDims = 2;
    outputs[3].d[0] = x.d[0];
    outputs[3].d[1] = exprBuilder.constant(2);
    if (withSizeTensor)
    {
        outputs[4].nbDims = 0;
    }
}

//! The output dtypes every merge op shares: y as x, size float32, assign / stats (/ the size tensor) int32.
inline void setMergeOutputTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType x) noexcept
{
    outputTypes[0] = x;
    outputTypes[1] = nvinfer1::DataType::kFLOAT;
    for (int32_t i = 2; i < nbOutputs; ++i)
    {
        outputTypes[i] = nvinfer1::DataType::kINT32;
    }
}

//! supportsFormatCombination of a merge op: linear formats; input 0 (x) float32|float16, the
//! `floatInputs` inputs after it float32, the remaining `intInputs` inputs int32; outputs as
//! setMergeOutputTypes.
inline bool mergeFormatSupported(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
    int32_t nbOutputs, int32_t floatInputs) noexcept
{
    if (inOut == nullptr || pos < 0 || pos >= nbInputs + nbOutputs)
    {
        return false;
    }
    nvinfer1::PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != nvinfer1::TensorFormat::kLINEAR)
    {
        return false;
    }
    if (pos == 0)
    {
        return desc.type == nvinfer1::DataType::kFLOAT || desc.type == nvinfer1::DataType::kHALF;
    }
    if (pos < nbInputs)
    {
        return desc.type == (pos <= floatInputs ? nvinfer1::DataType::kFLOAT : nvinfer1::DataType::kINT32);
    }
    int32_t const out = pos - nbInputs;
    if (out == 0)
    {
        return desc.type == inOut[0].desc.type;
    }
    return desc.type == (out == 1 ? nvinfer1::DataType::kFLOAT : nvinfer1::DataType::kINT32);
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
