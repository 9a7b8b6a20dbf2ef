/*
 * AlgmGbm TensorRT plugins: IPluginV3 wrappers around the GBM kernels (algmGbmKernel.cu).
 *
 * Version "1" (static token mode):
 *   Inputs:  x [B, T, D] float32|float16 (T = P + C1), size [B, T] float32, assign [B, N] int32
 *   Outputs: y [B, P+C2, D] (dtype of x), size [B, P+C2] float32, assign [B, N] int32, stats [B, 2] int32
 *   Fields:  num_prefix, capacity (INT32), divisor (FLOAT32), plugin_version, plugin_namespace (CHAR, optional).
 * Version "2" (dynamic token mode): the same inputs (T = P + K1, data-dependent); outputs
 *   y [B, P+K2, D], size [B, P+K2], assign [B, N], stats [B, 2], P + K2 (0-D int32 size tensor).
 *   Fields: num_prefix (INT32), divisor (FLOAT32), plugin_version, plugin_namespace.
 */
#include "algmGbmPlugin.h"

#include "../common/algmKernels.h"
#include "algmGbmKernel.h"

#include <cstring>
#include <sstream>

namespace algm
{
namespace plugin
{

namespace
{

using Field = AttributeField<GbmAttributes>;

std::string modeName(bool dynamic)
{
    return dynamic ? std::string(AlgmGbmPlugin::kName) + " (dynamic)" : std::string(AlgmGbmPlugin::kName);
}

} // namespace

template <bool Dynamic>
std::vector<AttributeField<GbmAttributes>> const& AlgmGbmPluginT<Dynamic>::fields()
{
    static std::vector<Field> const table = [] {
        std::vector<Field> t{{"num_prefix", &GbmAttributes::numPrefix, nullptr}};
        if (!Dynamic)
        {
            t.push_back({"capacity", &GbmAttributes::capacity, nullptr});
        }
        t.push_back({"divisor", nullptr, &GbmAttributes::divisor});
        return t;
    }();
    return table;
}

template <bool Dynamic>
AlgmGbmPluginT<Dynamic>::AlgmGbmPluginT(GbmAttributes const& attrs)
    : mAttrs(attrs)
{
    if (Dynamic)
    {
        mAttrs.capacity = 0;
    }
    initFields();
}

template <bool Dynamic>
AlgmGbmPluginT<Dynamic>::AlgmGbmPluginT(AlgmGbmPluginT const& other)
    : AlgmPluginBase<AlgmGbmPluginT<Dynamic>>(other)
    , mAttrs(other.mAttrs)
{
    initFields();
}

template <bool Dynamic>
void AlgmGbmPluginT<Dynamic>::initFields()
{
    serialiseAttributes(this->mFields, mAttrs, fields());
    this->publishFields();
    this->mMetadata = describeAttributes(kName, Dynamic, mAttrs, fields());
}

template <bool Dynamic>
bool AlgmGbmPluginT<Dynamic>::checkInputDims(nvinfer1::Dims const* dims, bool allowWildcards) const noexcept
{
    nvinfer1::Dims const& x = dims[0];
    nvinfer1::Dims const& s = dims[1];
    nvinfer1::Dims const& a = dims[2];
    if (x.nbDims != 3 || s.nbDims != 2 || a.nbDims != 2)
    {
        logError(modeName(Dynamic) + ": expected x [B, T, D], size [B, T], assign [B, N]");
        return false;
    }
    auto known = [allowWildcards](int64_t v) { return !(allowWildcards && v == -1); };
    if (known(x.d[1]) && known(s.d[1]) && x.d[1] != s.d[1])
    {
        logError(modeName(Dynamic) + ": x and size disagree on the token count");
        return false;
    }
    if (!known(x.d[1]) || !known(a.d[1]))
    {
        return true;
    }
    int32_t const tokens = static_cast<int32_t>(x.d[1]);
    // dynamic: every input slot may be kept (capacity T - P)
    int32_t const capacity = Dynamic ? tokens - mAttrs.numPrefix : mAttrs.capacity;
    if (algmGbmCheckAttributes(tokens, static_cast<int32_t>(a.d[1]), mAttrs.numPrefix, capacity) != ALGM_STATUS_SUCCESS)
    {
        logError(modeName(Dynamic) + ": unsupported sizes T=" + std::to_string(x.d[1]) + " N=" + std::to_string(a.d[1])
            + " num_prefix=" + std::to_string(mAttrs.numPrefix)
            + (Dynamic ? " (need num_prefix < T <= 8192 + num_prefix, N <= 8192)"
                       : " capacity=" + std::to_string(mAttrs.capacity)
                           + " (need 1 <= capacity <= T - num_prefix, T <= 8192 + num_prefix, N <= 8192)"));
        return false;
    }
    return true;
}

template <bool Dynamic>
int32_t AlgmGbmPluginT<Dynamic>::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || in == nullptr)
    {
        return -1;
    }
    nvinfer1::Dims dims[kNbInputs] = {in[0].desc.dims, in[1].desc.dims, in[2].desc.dims};
    return checkInputDims(dims, true) ? 0 : -1;
}

template <bool Dynamic>
int32_t AlgmGbmPluginT<Dynamic>::getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
    nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || outputTypes == nullptr || inputTypes == nullptr)
    {
        return -1;
    }
    if (toAlgmDtype(inputTypes[0]) < 0 || inputTypes[1] != nvinfer1::DataType::kFLOAT
        || inputTypes[2] != nvinfer1::DataType::kINT32)
    {
        logError(modeName(Dynamic) + ": inputs must be x float32|float16, size float32, assign int32");
        return -1;
    }
    setMergeOutputTypes(outputTypes, nbOutputs, inputTypes[0]);
    return 0;
}

template <bool Dynamic>
int32_t AlgmGbmPluginT<Dynamic>::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || inputs == nullptr || outputs == nullptr)
    {
        return -1;
    }
    nvinfer1::DimsExprs const& x = inputs[0];
    nvinfer1::DimsExprs const& assign = inputs[2];
    if (x.nbDims != 3 || inputs[1].nbDims != 2 || assign.nbDims != 2 || (Dynamic && !assign.d[1]->isConstant()))
    {
        logError(modeName(Dynamic) + ": expected x [B, T, D], size [B, T], assign [B, N]"
            + (Dynamic ? " with N fixed" : ""));
        return -1;
    }
    nvinfer1::IDimensionExpr const* outTokens = nullptr;
    if (Dynamic)
    {
        // P + K2 <= P + K1 <= P + N, the size tensor itself (no arithmetic on size tensors). Its
        // auto-tuning value must not depend on a size tensor (T is CLAP's): P + half the patches,
        // about what the published GBM keeps after CLAP.
        int64_t const n = assign.d[1]->getConstantValue();
        auto const* opt = exprBuilder.constant(mAttrs.numPrefix + (n + 1) / 2);
        auto const* upper = exprBuilder.constant(mAttrs.numPrefix + n);
        outTokens = exprBuilder.declareSizeTensor(4, *opt, *upper);
        if (outTokens == nullptr)
        {
            return -1;
        }
    }
    else
    {
        if (x.d[1]->isConstant() && x.d[1]->getConstantValue() - mAttrs.numPrefix < mAttrs.capacity)
        {
            logError(modeName(Dynamic) + ": capacity " + std::to_string(mAttrs.capacity)
                + " exceeds the input token capacity " + std::to_string(x.d[1]->getConstantValue() - mAttrs.numPrefix));
            return -1;
        }
        outTokens = exprBuilder.constant(static_cast<int64_t>(mAttrs.numPrefix) + mAttrs.capacity);
    }
    setMergeOutputShapes(outputs, x, outTokens, assign.d[1], Dynamic, exprBuilder);
    return 0;
}

template <bool Dynamic>
bool AlgmGbmPluginT<Dynamic>::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    // x; size float32; assign int32; outputs y, size, assign, stats (, P + K2)
    return nbInputs == kNbInputs && nbOutputs == kNbOutputs && mergeFormatSupported(pos, inOut, nbInputs, nbOutputs, 1);
}

template <bool Dynamic>
size_t AlgmGbmPluginT<Dynamic>::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    if (inputs == nullptr || nbInputs != kNbInputs || inputs[0].max.nbDims != 3 || inputs[2].max.nbDims != 2)
    {
        return 0;
    }
    int64_t const maxBatch = inputs[0].max.d[0];
    int64_t const tokens = inputs[0].max.d[1]; // dynamic: the upper bound of the data-dependent T
    int64_t const patches = inputs[2].max.d[1];
    if (maxBatch < 0 || maxBatch > INT32_MAX || tokens < 0 || tokens > INT32_MAX || patches < 0 || patches > INT32_MAX)
    {
        return 0;
    }
    auto const b = static_cast<int32_t>(maxBatch);
    auto const t = static_cast<int32_t>(tokens);
    auto const n = static_cast<int32_t>(patches);
    return Dynamic ? algmGbmDynamicWorkspaceSize(b, t, n, mAttrs.numPrefix)
                   : algmGbmWorkspaceSize(b, t, n, mAttrs.numPrefix, mAttrs.capacity);
}

template <bool Dynamic>
int32_t AlgmGbmPluginT<Dynamic>::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (in == nullptr || nbInputs != kNbInputs || nbOutputs != kNbOutputs)
    {
        return -1;
    }
    nvinfer1::Dims dims[kNbInputs] = {in[0].dims, in[1].dims, in[2].dims};
    return checkInputDims(dims, false) ? 0 : -1;
}

template <bool Dynamic>
int32_t AlgmGbmPluginT<Dynamic>::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
    nvinfer1::PluginTensorDesc const* /*outputDesc*/, void const* const* inputs, void* const* outputs, void* workspace,
    cudaStream_t stream) noexcept
{
    if (inputDesc == nullptr || inputs == nullptr || outputs == nullptr)
    {
        return -1;
    }
    nvinfer1::Dims const& x = inputDesc[0].dims;
    nvinfer1::Dims const& a = inputDesc[2].dims;
    int32_t const dtype = toAlgmDtype(inputDesc[0].type);
    if (x.nbDims != 3 || a.nbDims != 2 || dtype < 0)
    {
        return -1;
    }
    int32_t const batch = static_cast<int32_t>(x.d[0]);
    int32_t const tokens = static_cast<int32_t>(x.d[1]);
    int32_t const patches = static_cast<int32_t>(a.d[1]);
    int32_t const dim = static_cast<int32_t>(x.d[2]);
    auto const* sizeIn = static_cast<float const*>(inputs[1]);
    auto const* assignIn = static_cast<int32_t const*>(inputs[2]);
    auto* sizeOut = static_cast<float*>(outputs[1]);
    auto* assignOut = static_cast<int32_t*>(outputs[2]);
    auto* stats = static_cast<int32_t*>(outputs[3]);
    int32_t status = ALGM_STATUS_SUCCESS;
    if (Dynamic)
    {
        status = algmGbmDynamicForward(inputs[0], sizeIn, assignIn, outputs[0], sizeOut, assignOut, stats,
            static_cast<int32_t*>(outputs[4]), batch, tokens, patches, dim, mAttrs.numPrefix,
            mAttrs.divisor, dtype, workspace, algmGbmDynamicWorkspaceSize(batch, tokens, patches, mAttrs.numPrefix),
            reinterpret_cast<void*>(stream));
    }
    else
    {
        GbmParams p{batch, tokens, patches, dim, mAttrs.numPrefix, mAttrs.capacity, mAttrs.divisor};
        status = gbmForward(p, dtype, inputs[0], sizeIn, assignIn, outputs[0], sizeOut, assignOut, stats, workspace,
            gbmWorkspaceSize(batch, tokens, patches, mAttrs.numPrefix, mAttrs.capacity), reinterpret_cast<void*>(stream));
    }
    if (status != ALGM_STATUS_SUCCESS)
    {
        logError(modeName(Dynamic) + ": enqueue failed: " + algmStatusString(status));
        return -1;
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------- creator

template <bool Dynamic>
AlgmGbmPluginCreatorT<Dynamic>::AlgmGbmPluginCreatorT()
    : AlgmPluginCreatorBase(AlgmGbmPluginT<Dynamic>::kName, AlgmGbmPluginT<Dynamic>::kVersion)
{
    addFieldNames(mFieldNames, AlgmGbmPluginT<Dynamic>::fields());
}

template <bool Dynamic>
nvinfer1::IPluginV3* AlgmGbmPluginCreatorT<Dynamic>::createFromFields(
    std::string const& layer, nvinfer1::PluginFieldCollection const& fc)
{
    using Plugin = AlgmGbmPluginT<Dynamic>;
    GbmAttributes a;
    if (!readAttributes(fc, Plugin::kName, Plugin::kVersion, layer, Plugin::fields(), a))
    {
        return nullptr;
    }
    if (a.numPrefix < 0 || a.numPrefix > algmMaxPrefix())
    {
        logError(prefixRangeMessage(layer, a.numPrefix));
        return nullptr;
    }
    if ((!Dynamic && a.capacity < 1) || !(a.divisor > 0.0f))
    {
        logError(layer + ": unsupported attributes num_prefix=" + std::to_string(a.numPrefix)
            + (Dynamic ? "" : " capacity=" + std::to_string(a.capacity)) + " divisor=" + std::to_string(a.divisor)
            + (Dynamic ? " (need divisor > 0)" : " (need capacity >= 1, divisor > 0)"));
        return nullptr;
    }
    return new Plugin(a);
}

template class AlgmGbmPluginT<false>;
template class AlgmGbmPluginT<true>;
template class AlgmGbmPluginCreatorT<false>;
template class AlgmGbmPluginCreatorT<true>;

} // namespace plugin
} // namespace algm
