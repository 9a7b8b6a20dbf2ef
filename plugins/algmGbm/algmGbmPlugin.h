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

class AlgmGbmPlugin : public AlgmPluginBase<AlgmGbmPlugin>
{
public:
    static constexpr char const* kName = "AlgmGbm";
    static constexpr char const* kVersion = kPluginVersion;
    static constexpr int32_t kNbInputs = 3;
    static constexpr int32_t kNbOutputs = 4;

    explicit AlgmGbmPlugin(GbmAttributes const& attrs);
    AlgmGbmPlugin(AlgmGbmPlugin const& other);

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
    bool checkInputDims(nvinfer1::Dims const* dims, bool allowWildcards) const noexcept;

    GbmAttributes mAttrs;
};

class AlgmGbmPluginCreator : public AlgmPluginCreatorBase
{
public:
    AlgmGbmPluginCreator();

protected:
    nvinfer1::IPluginV3* createFromFields(
        std::string const& layer, nvinfer1::PluginFieldCollection const& fc) override;
};

//! Dynamic token mode (version "2"): inputs x [B, T, D], size [B, T], assign [B, N] (T = P + K1,
//! itself data-dependent); outputs y [B, P+K2, D], size [B, P+K2], assign [B, N], stats [B, 2],
//! P + K2 (int32 size tensor, 0-D). Capacity = every input slot: never a forced merge.
class AlgmGbmDynamicPlugin : public AlgmPluginBase<AlgmGbmDynamicPlugin>
{
public:
    static constexpr char const* kName = "AlgmGbm";
    static constexpr char const* kVersion = kDynamicPluginVersion;
    static constexpr int32_t kNbInputs = 3;
    static constexpr int32_t kNbOutputs = 5;

    //! attrs.capacity is unused.
    explicit AlgmGbmDynamicPlugin(GbmAttributes const& attrs);
    AlgmGbmDynamicPlugin(AlgmGbmDynamicPlugin const& other);

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
    bool checkInputDims(nvinfer1::Dims const* dims, bool allowWildcards) const noexcept;

    GbmAttributes mAttrs;
};

class AlgmGbmDynamicPluginCreator : public AlgmPluginCreatorBase
{
public:
    AlgmGbmDynamicPluginCreator();

protected:
    nvinfer1::IPluginV3* createFromFields(
        std::string const& layer, nvinfer1::PluginFieldCollection const& fc) override;
};

} // namespace plugin
} // namespace algm

#endif // ALGM_GBM_PLUGIN_H
