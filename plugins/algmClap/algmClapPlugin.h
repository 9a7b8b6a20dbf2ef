/*
 * AlgmClap TensorRT plugins (IPluginV3, namespace "algm"): version "1" static-shape CLAP
 * (capacity C1), version "2" dynamic token mode (the token slots of the batch as a size tensor, the
 * threshold an input). See README.md next to this file and docs/static-ops.md.
 */
#ifndef ALGM_CLAP_PLUGIN_H
#define ALGM_CLAP_PLUGIN_H

#include "../common/algmPluginCommon.h"

#include <NvInferRuntime.h>

#include <string>
#include <vector>

namespace algm
{
namespace plugin
{

struct ClapAttributes
{
    int32_t gridH{0};
    int32_t gridW{0};
    int32_t windowH{2};
    int32_t windowW{2};
    int32_t numPrefix{1};
    int32_t capacity{0};
    float threshold{0.0f};
};

//! AlgmClap, both token modes in one class (`Dynamic`):
//! * version "1" (static, AlgmClapPlugin): input x [B, P+N, D]; outputs y [B, P+C1, D],
//!   size [B, P+C1], assign [B, N], stats [B, 2]; fields grid_h, grid_w, window_h, window_w,
//!   num_prefix, capacity, threshold.
//! * version "2" (dynamic, AlgmClapDynamicPlugin): inputs x [B, P+N, D], threshold [B] float32;
//!   the same outputs with P+K token slots (the batch's largest real count) and a fifth, P + K as
//!   an int32 size tensor (0-D); fields without capacity and threshold (capacity N, threshold input).
template <bool Dynamic>
class AlgmClapPluginT : public AlgmPluginBase<AlgmClapPluginT<Dynamic>>
{
public:
    static constexpr char const* kName = "AlgmClap";
    static constexpr char const* kVersion = Dynamic ? kDynamicPluginVersion : kPluginVersion;
    static constexpr int32_t kNbInputs = Dynamic ? 2 : 1;
    static constexpr int32_t kNbOutputs = Dynamic ? 5 : 4;

    //! The op's fields in this token mode (serialised, advertised and read by the creator).
    static std::vector<AttributeField<ClapAttributes>> const& fields();

    //! Dynamic: attrs.capacity and attrs.threshold are ignored (capacity N, threshold from the input).
    explicit AlgmClapPluginT(ClapAttributes const& attrs);
    AlgmClapPluginT(AlgmClapPluginT const& other);

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

    ClapAttributes const& attributes() const noexcept
    {
        return mAttrs;
    }

private:
    void initFields();
    //! dims: the inputs (x, and threshold when Dynamic). With allowWildcards, -1 extents are not checked.
    bool checkInputDims(nvinfer1::Dims const* dims, bool allowWildcards) const noexcept;

    ClapAttributes mAttrs;
};

template <bool Dynamic>
class AlgmClapPluginCreatorT : public AlgmPluginCreatorBase
{
public:
    AlgmClapPluginCreatorT();

protected:
    nvinfer1::IPluginV3* createFromFields(
        std::string const& layer, nvinfer1::PluginFieldCollection const& fc) override;
};

using AlgmClapPlugin = AlgmClapPluginT<false>;
using AlgmClapDynamicPlugin = AlgmClapPluginT<true>;
using AlgmClapPluginCreator = AlgmClapPluginCreatorT<false>;
using AlgmClapDynamicPluginCreator = AlgmClapPluginCreatorT<true>;

extern template class AlgmClapPluginT<false>;
extern template class AlgmClapPluginT<true>;
extern template class AlgmClapPluginCreatorT<false>;
extern template class AlgmClapPluginCreatorT<true>;

} // namespace plugin
} // namespace algm

#endif // ALGM_CLAP_PLUGIN_H
