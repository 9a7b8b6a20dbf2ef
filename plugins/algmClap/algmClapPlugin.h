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

class AlgmClapPlugin : public AlgmPluginBase<AlgmClapPlugin>
{
public:
    static constexpr char const* kName = "AlgmClap";
    static constexpr char const* kVersion = kPluginVersion;
    static constexpr int32_t kNbInputs = 1;
    static constexpr int32_t kNbOutputs = 4;

    explicit AlgmClapPlugin(ClapAttributes const& attrs);
    AlgmClapPlugin(AlgmClapPlugin const& other);

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
    bool checkInputDims(nvinfer1::Dims const& dims, bool allowWildcards) const noexcept;

    ClapAttributes mAttrs;
};

class AlgmClapPluginCreator : public AlgmPluginCreatorBase
{
public:
    AlgmClapPluginCreator();

protected:
    nvinfer1::IPluginV3* createFromFields(
        std::string const& layer, nvinfer1::PluginFieldCollection const& fc) override;
};

//! Dynamic token mode (version "2"): inputs x [B, P+N, D], threshold [B] float32; outputs
//! y [B, P+K, D], size [B, P+K], assign [B, N], stats [B, 2], P + K (int32 size tensor, 0-D: the
//! token dimension of y itself).
class AlgmClapDynamicPlugin : public AlgmPluginBase<AlgmClapDynamicPlugin>
{
public:
    static constexpr char const* kName = "AlgmClap";
    static constexpr char const* kVersion = kDynamicPluginVersion;
    static constexpr int32_t kNbInputs = 2;
    static constexpr int32_t kNbOutputs = 5;

    //! attrs.capacity and attrs.threshold are unused (capacity N, threshold from the input).
    explicit AlgmClapDynamicPlugin(ClapAttributes const& attrs);
    AlgmClapDynamicPlugin(AlgmClapDynamicPlugin const& other);

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
    bool checkInputDims(nvinfer1::Dims const& x, nvinfer1::Dims const& threshold, bool allowWildcards) const noexcept;

    ClapAttributes mAttrs;
};

class AlgmClapDynamicPluginCreator : public AlgmPluginCreatorBase
{
public:
    AlgmClapDynamicPluginCreator();

protected:
    nvinfer1::IPluginV3* createFromFields(
        std::string const& layer, nvinfer1::PluginFieldCollection const& fc) override;
};

} // namespace plugin
} // namespace algm

#endif // ALGM_CLAP_PLUGIN_H
