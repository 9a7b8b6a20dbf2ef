/*
 * AlgmGbm TensorRT plugins (IPluginV3, namespace "algm"): version "1" static-shape GBM
 * (capacity C2), version "2" dynamic token mode (the token slots of the batch as a size tensor).
 * See README.md next to this file and docs/static-ops.md.
 */
#ifndef ALGM_GBM_PLUGIN_H
#define ALGM_GBM_PLUGIN_H

#include "../common/algmPluginCommon.h"

#include <NvInferRuntime.h>

#include <string>
#include <vector>

namespace algm
{
namespace plugin
{

struct GbmAttributes
{
    int32_t numPrefix{1};
    int32_t capacity{0};
    float divisor{1.0f};
};

//! AlgmGbm, both token modes in one class (`Dynamic`). Inputs x [B, T, D] float32|float16,
//! size [B, T] float32, assign [B, N] int32; outputs y [B, P+C2, D], size [B, P+C2], assign [B, N],
//! stats [B, 2].
//! * version "1" (static, AlgmGbmPlugin): T = P + C1, C2 = the `capacity` field.
//! * version "2" (dynamic, AlgmGbmDynamicPlugin): T = P + K1 itself data-dependent, C2 = K2 (every
//!   input slot is a possible output slot: never a forced merge), and a fifth output, P + K2 as an
//!   int32 size tensor (0-D); no capacity field.
template <bool Dynamic>
class AlgmGbmPluginT : public AlgmPluginBase<AlgmGbmPluginT<Dynamic>>
{
public:
    static constexpr char const* kName = "AlgmGbm";
    static constexpr char const* kVersion = Dynamic ? kDynamicPluginVersion : kPluginVersion;
    static constexpr int32_t kNbInputs = 3;
    static constexpr int32_t kNbOutputs = Dynamic ? 5 : 4;

    //! The op's fields in this token mode (serialised, advertised and read by the creator).
    static std::vector<AttributeField<GbmAttributes>> const& fields();

    //! Dynamic: attrs.capacity is ignored.
    explicit AlgmGbmPluginT(GbmAttributes const& attrs);
    AlgmGbmPluginT(AlgmGbmPluginT const& other);

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;

    GbmAttributes const& attributes() const noexcept
    {
        return mAttrs;
    }

private:
    void initFields();
    //! dims: x, size, assign. With allowWildcards, -1 extents (build time) are not checked.
    bool checkInputDims(nvinfer1::Dims const* dims, bool allowWildcards) const noexcept;

    GbmAttributes mAttrs;
};

template <bool Dynamic>
class AlgmGbmPluginCreatorT : public AlgmPluginCreatorBase
{
public:
    AlgmGbmPluginCreatorT();

protected:
    nvinfer1::IPluginV3* createFromFields(
        std::string const& layer, nvinfer1::PluginFieldCollection const& fc) override;
};

using AlgmGbmPlugin = AlgmGbmPluginT<false>;
using AlgmGbmDynamicPlugin = AlgmGbmPluginT<true>;
using AlgmGbmPluginCreator = AlgmGbmPluginCreatorT<false>;
using AlgmGbmDynamicPluginCreator = AlgmGbmPluginCreatorT<true>;

extern template class AlgmGbmPluginT<false>;
extern template class AlgmGbmPluginT<true>;
extern template class AlgmGbmPluginCreatorT<false>;
extern template class AlgmGbmPluginCreatorT<true>;

} // namespace plugin
} // namespace algm

#endif // ALGM_GBM_PLUGIN_H
