/*
 * AlgmClap TensorRT plugins: IPluginV3 wrappers around the CLAP kernels (algmClapKernel.cu).
 *
 * Version "1" (static token mode):
 *   Inputs:  x [B, P+N, D] float32|float16
 *   Outputs: y [B, P+C1, D] (dtype of x), size [B, P+C1] float32, assign [B, N] int32, stats [B, 2] int32
 *   Fields:  grid_h, grid_w, window_h, window_w, num_prefix, capacity (INT32), threshold (FLOAT32),
 *            plugin_version, plugin_namespace (CHAR, optional).
 * Version "2" (dynamic token mode):
 *   Inputs:  x [B, P+N, D] float32|float16, threshold [B] float32
 *   Outputs: y [B, P+K, D], size [B, P+K], assign [B, N], stats [B, 2], P + K (0-D int32 size tensor)
 *   Fields:  grid_h, grid_w, window_h, window_w, num_prefix (INT32), plugin_version, plugin_namespace.
 */
#include "algmClapPlugin.h"

#include "../common/algmKernels.h"
#include "algmClapKernel.h"

#include <cstring>
#include <sstream>

namespace algm
{
namespace plugin
{

namespace
{

using Field = AttributeField<ClapAttributes>;

std::string modeName(bool dynamic)
{
    return dynamic ? std::string(AlgmClapPlugin::kName) + " (dynamic)" : std::string(AlgmClapPlugin::kName);
}

} // namespace

template <bool Dynamic>
std::vector<AttributeField<ClapAttributes>> const& AlgmClapPluginT<Dynamic>::fields()
{
    static std::vector<Field> const table = [] {
        std::vector<Field> t{{"grid_h", &ClapAttributes::gridH, nullptr}, {"grid_w", &ClapAttributes::gridW, nullptr},
            {"window_h", &ClapAttributes::windowH, nullptr}, {"window_w", &ClapAttributes::windowW, nullptr},
            {"num_prefix", &ClapAttributes::numPrefix, nullptr}};
        if (!Dynamic)
        {
            t.push_back({"capacity", &ClapAttributes::capacity, nullptr});
            t.push_back({"threshold", nullptr, &ClapAttributes::threshold});
        }
        return t;
    }();
    return table;
}

template <bool Dynamic>
AlgmClapPluginT<Dynamic>::AlgmClapPluginT(ClapAttributes const& attrs)
    : mAttrs(attrs)
{
    if (Dynamic)
    {
        mAttrs.capacity = mAttrs.gridH * mAttrs.gridW;
        mAttrs.threshold = 0.0f;
    }
    initFields();
}

template <bool Dynamic>
AlgmClapPluginT<Dynamic>::AlgmClapPluginT(AlgmClapPluginT const& other)
    : AlgmPluginBase<AlgmClapPluginT<Dynamic>>(other)
    , mAttrs(other.mAttrs)
{
    initFields();
}

template <bool Dynamic>
void AlgmClapPluginT<Dynamic>::initFields()
{
    serialiseAttributes(this->mFields, mAttrs, fields());
    this->publishFields();
    this->mMetadata = describeAttributes(kName, Dynamic, mAttrs, fields());
}

template <bool Dynamic>
bool AlgmClapPluginT<Dynamic>::checkInputDims(nvinfer1::Dims const* dims, bool allowWildcards) const noexcept
{
    nvinfer1::Dims const& x = dims[0];
    int64_t const tokens = static_cast<int64_t>(mAttrs.numPrefix) + static_cast<int64_t>(mAttrs.gridH) * mAttrs.gridW;
    if (x.nbDims != 3 || (Dynamic && dims[kNbInputs - 1].nbDims != 1))
    {
        logError(modeName(Dynamic) + (Dynamic ? ": expected x [B, P+N, D] and threshold [B]"
                                              : ": x must be [B, P+N, D], got rank " + std::to_string(x.nbDims)));
        return false;
    }
    if (x.d[1] != tokens && !(allowWildcards && x.d[1] == -1))
    {
        logError(modeName(Dynamic) + ": x has " + std::to_string(x.d[1])
            + " tokens, expected num_prefix + grid_h * grid_w = " + std::to_string(tokens));
        return false;
    }
    if (Dynamic)
    {
        bool const known = !(allowWildcards && (x.d[0] == -1 || dims[kNbInputs - 1].d[0] == -1));
        if (known && x.d[0] != dims[kNbInputs - 1].d[0])
        {
            logError(modeName(Dynamic) + ": threshold must have one value per image ([B])");
            return false;
        }
    }
    return true;
}

template <bool Dynamic>
int32_t AlgmClapPluginT<Dynamic>::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || in == nullptr)
    {
        return -1;
    }
    nvinfer1::Dims dims[kNbInputs];
    for (int32_t i = 0; i < kNbInputs; ++i)
    {
        dims[i] = in[i].desc.dims;
    }
    return checkInputDims(dims, true) ? 0 : -1;
}

template <bool Dynamic>
int32_t AlgmClapPluginT<Dynamic>::getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
    nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || outputTypes == nullptr || inputTypes == nullptr)
    {
        return -1;
    }
    if (toAlgmDtype(inputTypes[0]) < 0 || (Dynamic && inputTypes[1] != nvinfer1::DataType::kFLOAT))
    {
        logError(modeName(Dynamic)
            + (Dynamic ? ": x must be float32 or float16, threshold float32" : ": x must be float32 or float16"));
        return -1;
    }
    setMergeOutputTypes(outputTypes, nbOutputs, inputTypes[0]);
    return 0;
}

template <bool Dynamic>
int32_t AlgmClapPluginT<Dynamic>::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || inputs == nullptr || outputs == nullptr)
    {
        return -1;
    }
    nvinfer1::DimsExprs const& x = inputs[0];
    if (x.nbDims != 3 || (Dynamic && inputs[kNbInputs - 1].nbDims != 1))
    {
        logError(modeName(Dynamic) + (Dynamic ? ": expected x [B, P+N, D] and threshold [B]" : ": x must be [B, P+N, D]"));
        return -1;
    }
    int64_t const n = static_cast<int64_t>(mAttrs.gridH) * mAttrs.gridW;
    if (x.d[1]->isConstant() && x.d[1]->getConstantValue() != mAttrs.numPrefix + n)
    {
        logError(modeName(Dynamic) + ": x has " + std::to_string(x.d[1]->getConstantValue())
            + " tokens, expected num_prefix + grid_h * grid_w = " + std::to_string(mAttrs.numPrefix + n));
        return -1;
    }
    nvinfer1::IDimensionExpr const* outTokens = nullptr;
    if (Dynamic)
    {
        // P + K: the token slots of the batch, written by enqueue (the size tensor is the dimension
        // itself: TensorRT refuses arithmetic on a size tensor, "condition: !y.isSizeTensor()").
        // Auto-tuned at P + 3/4 of the patches (about what the published thresholds keep on real
        // photos), at most P + N (nothing merged).
        auto const* opt = exprBuilder.constant(mAttrs.numPrefix + (3 * n + 3) / 4);
        auto const* upper = exprBuilder.constant(mAttrs.numPrefix + n);
        outTokens = exprBuilder.declareSizeTensor(4, *opt, *upper);
        if (outTokens == nullptr)
        {
            return -1;
        }
    }
    else
    {
        outTokens = exprBuilder.constant(static_cast<int64_t>(mAttrs.numPrefix) + mAttrs.capacity);
    }
    setMergeOutputShapes(outputs, x, outTokens, exprBuilder.constant(n), Dynamic, exprBuilder);
    return 0;
}

template <bool Dynamic>
bool AlgmClapPluginT<Dynamic>::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    // x; (dynamic) threshold float32; outputs y, size, assign, stats (, P + K)
    return nbInputs == kNbInputs && nbOutputs == kNbOutputs
        && mergeFormatSupported(pos, inOut, nbInputs, nbOutputs, Dynamic ? 1 : 0);
}

template <bool Dynamic>
size_t AlgmClapPluginT<Dynamic>::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    if (inputs == nullptr || nbInputs != kNbInputs || inputs[0].max.nbDims < 1)
    {
        return 0;
    }
    int64_t const maxBatch = inputs[0].max.d[0];
    if (maxBatch < 0 || maxBatch > INT32_MAX)
    {
        return 0;
    }
    ClapAttributes const& a = mAttrs;
    if (Dynamic)
    {
        return algmClapDynamicWorkspaceSize(
            static_cast<int32_t>(maxBatch), a.gridH, a.gridW, a.windowH, a.windowW, a.numPrefix);
    }
    return algmClapWorkspaceSize(
        static_cast<int32_t>(maxBatch), a.gridH, a.gridW, a.windowH, a.windowW, a.numPrefix, a.capacity);
}

template <bool Dynamic>
int32_t AlgmClapPluginT<Dynamic>::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (in == nullptr || nbInputs != kNbInputs || nbOutputs != kNbOutputs)
    {
        return -1;
    }
    nvinfer1::Dims dims[kNbInputs];
    for (int32_t i = 0; i < kNbInputs; ++i)
    {
        dims[i] = in[i].dims;
    }
    return checkInputDims(dims, false) ? 0 : -1;
}

template <bool Dynamic>
int32_t AlgmClapPluginT<Dynamic>::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
    nvinfer1::PluginTensorDesc const* /*outputDesc*/, void const* const* inputs, void* const* outputs, void* workspace,
    cudaStream_t stream) noexcept
{
    if (inputDesc == nullptr || inputs == nullptr || outputs == nullptr)
    {
        return -1;
    }
    nvinfer1::Dims const& dims = inputDesc[0].dims;
    int32_t const dtype = toAlgmDtype(inputDesc[0].type);
    if (dims.nbDims != 3 || dtype < 0)
    {
        return -1;
    }
    ClapAttributes const& a = mAttrs;
    int32_t const batch = static_cast<int32_t>(dims.d[0]);
    int32_t const dim = static_cast<int32_t>(dims.d[2]);
    int32_t status = ALGM_STATUS_SUCCESS;
    if (Dynamic)
    {
        // the outputs' buffers hold the upper bound (P + N rows); the kernels write [B, P+K, ...]
        status = algmClapDynamicForward(inputs[0], static_cast<float const*>(inputs[1]), outputs[0],
            static_cast<float*>(outputs[1]), static_cast<int32_t*>(outputs[2]), static_cast<int32_t*>(outputs[3]),
            static_cast<int32_t*>(outputs[4]), batch, dim, a.gridH, a.gridW, a.windowH, a.windowW, a.numPrefix, dtype,
            workspace, algmClapDynamicWorkspaceSize(batch, a.gridH, a.gridW, a.windowH, a.windowW, a.numPrefix),
            reinterpret_cast<void*>(stream));
    }
    else
    {
        ClapParams p{batch, dim, a.gridH, a.gridW, a.windowH, a.windowW, a.numPrefix, a.capacity, a.threshold};
        status = clapForward(p, dtype, inputs[0], outputs[0], static_cast<float*>(outputs[1]),
            static_cast<int32_t*>(outputs[2]), static_cast<int32_t*>(outputs[3]), workspace,
            clapWorkspaceSize(batch, a.gridH, a.gridW, a.windowH, a.windowW, a.numPrefix, a.capacity),
            reinterpret_cast<void*>(stream));
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
AlgmClapPluginCreatorT<Dynamic>::AlgmClapPluginCreatorT()
    : AlgmPluginCreatorBase(AlgmClapPluginT<Dynamic>::kName, AlgmClapPluginT<Dynamic>::kVersion)
{
    addFieldNames(mFieldNames, AlgmClapPluginT<Dynamic>::fields());
}

template <bool Dynamic>
nvinfer1::IPluginV3* AlgmClapPluginCreatorT<Dynamic>::createFromFields(
    std::string const& layer, nvinfer1::PluginFieldCollection const& fc)
{
    using Plugin = AlgmClapPluginT<Dynamic>;
    ClapAttributes a;
    if (!readAttributes(fc, Plugin::kName, Plugin::kVersion, layer, Plugin::fields(), a))
    {
        return nullptr;
    }
    if (a.numPrefix < 0 || a.numPrefix > algmMaxPrefix())
    {
        logError(prefixRangeMessage(layer, a.numPrefix));
        return nullptr;
    }
    // dynamic: capacity N (checked without overflow for silly grids)
    int64_t const n = static_cast<int64_t>(a.gridH) * a.gridW;
    int32_t const capacity = Dynamic ? static_cast<int32_t>(n > 0 && n <= INT32_MAX ? n : 0) : a.capacity;
    if (algmClapCheckAttributes(a.gridH, a.gridW, a.windowH, a.windowW, a.numPrefix, capacity) != ALGM_STATUS_SUCCESS)
    {
        std::ostringstream s;
        s << layer << ": unsupported attributes grid=" << a.gridH << "x" << a.gridW << " window=" << a.windowH << "x"
          << a.windowW << " num_prefix=" << a.numPrefix;
        if (!Dynamic)
        {
            s << " capacity=" << a.capacity;
        }
        s << " (need: window divides grid, 2 <= window area <= 64, grid_h*grid_w <= 8192"
          << (Dynamic ? ")" : ", N/k <= capacity <= N)");
        logError(s.str());
        return nullptr;
    }
    return new Plugin(a);
}

template class AlgmClapPluginT<false>;
template class AlgmClapPluginT<true>;
template class AlgmClapPluginCreatorT<false>;
template class AlgmClapPluginCreatorT<true>;

} // namespace plugin
} // namespace algm
