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

AlgmGbmPlugin::AlgmGbmPlugin(GbmAttributes const& attrs)
    : mAttrs(attrs)
{
    initFields();
}

AlgmGbmPlugin::AlgmGbmPlugin(AlgmGbmPlugin const& other)
    : AlgmPluginBase(other)
    , mAttrs(other.mAttrs)
{
    initFields();
}

void AlgmGbmPlugin::initFields()
{
    mFields.clear();
    mFields.emplace_back("num_prefix", &mAttrs.numPrefix, nvinfer1::PluginFieldType::kINT32, 1);
    mFields.emplace_back("capacity", &mAttrs.capacity, nvinfer1::PluginFieldType::kINT32, 1);
    mFields.emplace_back("divisor", &mAttrs.divisor, nvinfer1::PluginFieldType::kFLOAT32, 1);
    publishFields();
    std::ostringstream s;
    s << kName << " num_prefix=" << mAttrs.numPrefix << " capacity=" << mAttrs.capacity
      << " divisor=" << mAttrs.divisor;
    mMetadata = s.str();
}

// dims: x, size, assign. With allowWildcards, -1 extents (build time) are not checked.
bool AlgmGbmPlugin::checkInputDims(nvinfer1::Dims const* dims, bool allowWildcards) const noexcept
{
    nvinfer1::Dims const& x = dims[0];
    nvinfer1::Dims const& s = dims[1];
    nvinfer1::Dims const& a = dims[2];
    if (x.nbDims != 3 || s.nbDims != 2 || a.nbDims != 2)
    {
        logError(std::string(kName) + ": expected x [B, T, D], size [B, T], assign [B, N]");
        return false;
    }
    auto known = [allowWildcards](int64_t v) { return !(allowWildcards && v == -1); };
    if (known(x.d[1]) && known(s.d[1]) && x.d[1] != s.d[1])
    {
        logError(std::string(kName) + ": x and size disagree on the token count");
        return false;
    }
    if (known(x.d[1]) && known(a.d[1])
        && algmGbmCheckAttributes(static_cast<int32_t>(x.d[1]), static_cast<int32_t>(a.d[1]), mAttrs.numPrefix,
               mAttrs.capacity)
            != ALGM_STATUS_SUCCESS)
    {
        logError(std::string(kName) + ": unsupported sizes T=" + std::to_string(x.d[1]) + " N="
            + std::to_string(a.d[1]) + " num_prefix=" + std::to_string(mAttrs.numPrefix) + " capacity="
            + std::to_string(mAttrs.capacity)
            + " (need 1 <= capacity <= T - num_prefix, T <= 8192 + num_prefix, N <= 8192)");
        return false;
    }
    return true;
}

int32_t AlgmGbmPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || in == nullptr)
    {
        return -1;
    }
    nvinfer1::Dims dims[kNbInputs] = {in[0].desc.dims, in[1].desc.dims, in[2].desc.dims};
    return checkInputDims(dims, true) ? 0 : -1;
}

int32_t AlgmGbmPlugin::getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
    nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || outputTypes == nullptr || inputTypes == nullptr)
    {
        return -1;
    }
    if (toAlgmDtype(inputTypes[0]) < 0 || inputTypes[1] != nvinfer1::DataType::kFLOAT
        || inputTypes[2] != nvinfer1::DataType::kINT32)
    {
        logError(std::string(kName) + ": inputs must be x float32|float16, size float32, assign int32");
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    outputTypes[1] = nvinfer1::DataType::kFLOAT;
    outputTypes[2] = nvinfer1::DataType::kINT32;
    outputTypes[3] = nvinfer1::DataType::kINT32;
    return 0;
}

int32_t AlgmGbmPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || inputs == nullptr || outputs == nullptr)
    {
        return -1;
    }
    nvinfer1::DimsExprs const& x = inputs[0];
    nvinfer1::DimsExprs const& assign = inputs[2];
    if (x.nbDims != 3 || inputs[1].nbDims != 2 || assign.nbDims != 2)
    {
        logError(std::string(kName) + ": expected x [B, T, D], size [B, T], assign [B, N]");
        return -1;
    }
    if (x.d[1]->isConstant() && x.d[1]->getConstantValue() - mAttrs.numPrefix < mAttrs.capacity)
    {
        logError(std::string(kName) + ": capacity " + std::to_string(mAttrs.capacity)
            + " exceeds the input token capacity " + std::to_string(x.d[1]->getConstantValue() - mAttrs.numPrefix));
        return -1;
    }
    auto const* outTokens = exprBuilder.constant(static_cast<int64_t>(mAttrs.numPrefix) + mAttrs.capacity);
    outputs[0].nbDims = 3;
    outputs[0].d[0] = x.d[0];
    outputs[0].d[1] = outTokens;
    outputs[0].d[2] = x.d[2];
    outputs[1].nbDims = 2;
    outputs[1].d[0] = x.d[0];
    outputs[1].d[1] = outTokens;
    outputs[2].nbDims = 2;
    outputs[2].d[0] = x.d[0];
    outputs[2].d[1] = assign.d[1];
    outputs[3].nbDims = 2;
    outputs[3].d[0] = x.d[0];
    outputs[3].d[1] = exprBuilder.constant(2);
    return 0;
}

bool AlgmGbmPlugin::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (inOut == nullptr || nbInputs != kNbInputs || nbOutputs != kNbOutputs || pos < 0
        || pos >= kNbInputs + kNbOutputs)
    {
        return false;
    }
    nvinfer1::PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != nvinfer1::TensorFormat::kLINEAR)
    {
        return false;
    }
    switch (pos)
    {
    case 0: return desc.type == nvinfer1::DataType::kFLOAT || desc.type == nvinfer1::DataType::kHALF;
    case 1: return desc.type == nvinfer1::DataType::kFLOAT;
    case 2: return desc.type == nvinfer1::DataType::kINT32;
    case 3: return desc.type == inOut[0].desc.type;
    case 4: return desc.type == nvinfer1::DataType::kFLOAT;
    default: return desc.type == nvinfer1::DataType::kINT32;
    }
}

size_t AlgmGbmPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    if (inputs == nullptr || nbInputs != kNbInputs || inputs[0].max.nbDims != 3 || inputs[2].max.nbDims != 2)
    {
        return 0;
    }
    int64_t const maxBatch = inputs[0].max.d[0];
    int64_t const tokens = inputs[0].max.d[1];
    int64_t const patches = inputs[2].max.d[1];
    if (maxBatch < 0 || maxBatch > INT32_MAX || tokens < 0 || tokens > INT32_MAX || patches < 0 || patches > INT32_MAX)
    {
        return 0;
    }
    return algmGbmWorkspaceSize(static_cast<int32_t>(maxBatch), static_cast<int32_t>(tokens),
        static_cast<int32_t>(patches), mAttrs.numPrefix, mAttrs.capacity);
}

int32_t AlgmGbmPlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (in == nullptr || nbInputs != kNbInputs || nbOutputs != kNbOutputs)
    {
        return -1;
    }
    nvinfer1::Dims dims[kNbInputs] = {in[0].dims, in[1].dims, in[2].dims};
    return checkInputDims(dims, false) ? 0 : -1;
}

int32_t AlgmGbmPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
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
    GbmParams p{static_cast<int32_t>(x.d[0]), static_cast<int32_t>(x.d[1]), static_cast<int32_t>(a.d[1]),
        static_cast<int32_t>(x.d[2]), mAttrs.numPrefix, mAttrs.capacity, mAttrs.divisor};
    size_t const wsSize = gbmWorkspaceSize(p.batch, p.numTokens, p.numPatches, p.numPrefix, p.capacity);
    int32_t const status = gbmForward(p, dtype, inputs[0], static_cast<float const*>(inputs[1]),
        static_cast<int32_t const*>(inputs[2]), outputs[0], static_cast<float*>(outputs[1]),
        static_cast<int32_t*>(outputs[2]), static_cast<int32_t*>(outputs[3]), workspace, wsSize,
        reinterpret_cast<void*>(stream));
    if (status != ALGM_STATUS_SUCCESS)
    {
        logError(std::string(kName) + ": enqueue failed: " + algmStatusString(status));
        return -1;
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------- creator

AlgmGbmPluginCreator::AlgmGbmPluginCreator()
    : AlgmPluginCreatorBase(AlgmGbmPlugin::kName, AlgmGbmPlugin::kVersion)
{
    mFieldNames.add("num_prefix", nvinfer1::PluginFieldType::kINT32);
    mFieldNames.add("capacity", nvinfer1::PluginFieldType::kINT32);
    mFieldNames.add("divisor", nvinfer1::PluginFieldType::kFLOAT32);
    mFieldNames.add("plugin_version", nvinfer1::PluginFieldType::kCHAR);
    mFieldNames.add("plugin_namespace", nvinfer1::PluginFieldType::kCHAR);
}

nvinfer1::IPluginV3* AlgmGbmPluginCreator::createFromFields(
    std::string const& layer, nvinfer1::PluginFieldCollection const& fc)
{
    GbmAttributes a;
    bool seenPrefix = false;
    bool seenCapacity = false;
    bool seenDivisor = false;
    bool const fieldsOk = visitPluginFields(fc, AlgmGbmPlugin::kName, AlgmGbmPlugin::kVersion, layer, [&](nvinfer1::PluginField const& f) {
        if (std::strcmp(f.name, "num_prefix") == 0)
        {
            seenPrefix = readIntField(f, a.numPrefix);
        }
        else if (std::strcmp(f.name, "capacity") == 0)
        {
            seenCapacity = readIntField(f, a.capacity);
        }
        else if (std::strcmp(f.name, "divisor") == 0)
        {
            seenDivisor = readFloatField(f, a.divisor);
        }
        else
        {
            return FieldStatus::kUNKNOWN;
        }
        return FieldStatus::kKNOWN;
    });
    if (!fieldsOk)
    {
        return nullptr;
    }
    if (!seenPrefix || !seenCapacity || !seenDivisor)
    {
        logError(layer + ": fields num_prefix (int), capacity (int) and divisor (float) are required");
        return nullptr;
    }
    if (a.numPrefix < 0 || a.numPrefix > 2 || a.capacity < 1 || !(a.divisor > 0.0f))
    {
        logError(layer + ": unsupported attributes num_prefix=" + std::to_string(a.numPrefix) + " capacity="
            + std::to_string(a.capacity) + " divisor=" + std::to_string(a.divisor)
            + " (need num_prefix in {0, 1, 2}, capacity >= 1, divisor > 0)");
        return nullptr;
    }
    return new AlgmGbmPlugin(a);
}

// ============================================================================ dynamic token mode

AlgmGbmDynamicPlugin::AlgmGbmDynamicPlugin(GbmAttributes const& attrs)
    : mAttrs(attrs)
{
    mAttrs.capacity = 0;
    initFields();
}

AlgmGbmDynamicPlugin::AlgmGbmDynamicPlugin(AlgmGbmDynamicPlugin const& other)
    : AlgmPluginBase(other)
    , mAttrs(other.mAttrs)
{
    initFields();
}

void AlgmGbmDynamicPlugin::initFields()
{
    mFields.clear();
    mFields.emplace_back("num_prefix", &mAttrs.numPrefix, nvinfer1::PluginFieldType::kINT32, 1);
    mFields.emplace_back("divisor", &mAttrs.divisor, nvinfer1::PluginFieldType::kFLOAT32, 1);
    publishFields();
    std::ostringstream s;
    s << kName << " (dynamic) num_prefix=" << mAttrs.numPrefix << " divisor=" << mAttrs.divisor;
    mMetadata = s.str();
}

bool AlgmGbmDynamicPlugin::checkInputDims(nvinfer1::Dims const* dims, bool allowWildcards) const noexcept
{
    nvinfer1::Dims const& x = dims[0];
    nvinfer1::Dims const& s = dims[1];
    nvinfer1::Dims const& a = dims[2];
    if (x.nbDims != 3 || s.nbDims != 2 || a.nbDims != 2)
    {
        logError(std::string(kName) + " (dynamic): expected x [B, T, D], size [B, T], assign [B, N]");
        return false;
    }
    auto known = [allowWildcards](int64_t v) { return !(allowWildcards && v == -1); };
    if (known(x.d[1]) && known(s.d[1]) && x.d[1] != s.d[1])
    {
        logError(std::string(kName) + " (dynamic): x and size disagree on the token count");
        return false;
    }
    if (known(x.d[1]) && known(a.d[1])
        && algmGbmCheckAttributes(static_cast<int32_t>(x.d[1]), static_cast<int32_t>(a.d[1]), mAttrs.numPrefix,
               static_cast<int32_t>(x.d[1]) - mAttrs.numPrefix)
            != ALGM_STATUS_SUCCESS)
    {
        logError(std::string(kName) + " (dynamic): unsupported sizes T=" + std::to_string(x.d[1]) + " N="
            + std::to_string(a.d[1]) + " num_prefix=" + std::to_string(mAttrs.numPrefix)
            + " (need num_prefix < T <= 8192 + num_prefix, N <= 8192)");
        return false;
    }
    return true;
}

int32_t AlgmGbmDynamicPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || in == nullptr)
    {
        return -1;
    }
    nvinfer1::Dims dims[kNbInputs] = {in[0].desc.dims, in[1].desc.dims, in[2].desc.dims};
    return checkInputDims(dims, true) ? 0 : -1;
}

int32_t AlgmGbmDynamicPlugin::getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
    nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || outputTypes == nullptr || inputTypes == nullptr)
    {
        return -1;
    }
    if (toAlgmDtype(inputTypes[0]) < 0 || inputTypes[1] != nvinfer1::DataType::kFLOAT
        || inputTypes[2] != nvinfer1::DataType::kINT32)
    {
        logError(std::string(kName) + " (dynamic): inputs must be x float32|float16, size float32, assign int32");
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    outputTypes[1] = nvinfer1::DataType::kFLOAT;
    outputTypes[2] = nvinfer1::DataType::kINT32;
    outputTypes[3] = nvinfer1::DataType::kINT32;
    outputTypes[4] = nvinfer1::DataType::kINT32;
    return 0;
}

int32_t AlgmGbmDynamicPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || inputs == nullptr || outputs == nullptr)
    {
        return -1;
    }
    nvinfer1::DimsExprs const& x = inputs[0];
    nvinfer1::DimsExprs const& assign = inputs[2];
    if (x.nbDims != 3 || inputs[1].nbDims != 2 || assign.nbDims != 2 || !assign.d[1]->isConstant())
    {
        logError(std::string(kName) + " (dynamic): expected x [B, T, D], size [B, T], assign [B, N] with N fixed");
        return -1;
    }
    // P + K2 <= P + K1 <= P + N, the size tensor itself (no arithmetic on size tensors). Its
    // auto-tuning value must not depend on a size tensor (T is CLAP's): P + half the patches,
    // about what the published GBM keeps after CLAP.
    int64_t const n = assign.d[1]->getConstantValue();
    auto const* opt = exprBuilder.constant(mAttrs.numPrefix + (n + 1) / 2);
    auto const* upper = exprBuilder.constant(mAttrs.numPrefix + n);
    auto const* outTokens = exprBuilder.declareSizeTensor(4, *opt, *upper);
    if (outTokens == nullptr)
    {
        return -1;
    }
    outputs[0].nbDims = 3;
    outputs[0].d[0] = x.d[0];
    outputs[0].d[1] = outTokens;
    outputs[0].d[2] = x.d[2];
    outputs[1].nbDims = 2;
    outputs[1].d[0] = x.d[0];
    outputs[1].d[1] = outTokens;
    outputs[2].nbDims = 2;
    outputs[2].d[0] = x.d[0];
    outputs[2].d[1] = assign.d[1];
    outputs[3].nbDims = 2;
    outputs[3].d[0] = x.d[0];
    outputs[3].d[1] = exprBuilder.constant(2);
    outputs[4].nbDims = 0;
    return 0;
}

bool AlgmGbmDynamicPlugin::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (inOut == nullptr || nbInputs != kNbInputs || nbOutputs != kNbOutputs || pos < 0
        || pos >= kNbInputs + kNbOutputs)
    {
        return false;
    }
    nvinfer1::PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != nvinfer1::TensorFormat::kLINEAR)
    {
        return false;
    }
    switch (pos)
    {
    case 0: return desc.type == nvinfer1::DataType::kFLOAT || desc.type == nvinfer1::DataType::kHALF;
    case 1: return desc.type == nvinfer1::DataType::kFLOAT;
    case 2: return desc.type == nvinfer1::DataType::kINT32;
    case 3: return desc.type == inOut[0].desc.type;
    case 4: return desc.type == nvinfer1::DataType::kFLOAT;
    default: return desc.type == nvinfer1::DataType::kINT32; // assign, stats, K2
    }
}

size_t AlgmGbmDynamicPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    if (inputs == nullptr || nbInputs != kNbInputs || inputs[0].max.nbDims != 3 || inputs[2].max.nbDims != 2)
    {
        return 0;
    }
    int64_t const maxBatch = inputs[0].max.d[0];
    int64_t const tokens = inputs[0].max.d[1]; // the upper bound of the data-dependent T
    int64_t const patches = inputs[2].max.d[1];
    if (maxBatch < 0 || maxBatch > INT32_MAX || tokens < 0 || tokens > INT32_MAX || patches < 0 || patches > INT32_MAX)
    {
        return 0;
    }
    return algmGbmDynamicWorkspaceSize(static_cast<int32_t>(maxBatch), static_cast<int32_t>(tokens),
        static_cast<int32_t>(patches), mAttrs.numPrefix);
}

int32_t AlgmGbmDynamicPlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (in == nullptr || nbInputs != kNbInputs || nbOutputs != kNbOutputs)
    {
        return -1;
    }
    nvinfer1::Dims dims[kNbInputs] = {in[0].dims, in[1].dims, in[2].dims};
    return checkInputDims(dims, false) ? 0 : -1;
}

int32_t AlgmGbmDynamicPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
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
    int32_t const status = algmGbmDynamicForward(inputs[0], static_cast<float const*>(inputs[1]),
        static_cast<int32_t const*>(inputs[2]), outputs[0], static_cast<float*>(outputs[1]),
        static_cast<int32_t*>(outputs[2]), static_cast<int32_t*>(outputs[3]), static_cast<int32_t*>(outputs[4]), batch,
        tokens, patches, static_cast<int32_t>(x.d[2]), mAttrs.numPrefix, mAttrs.divisor, dtype, workspace,
        algmGbmDynamicWorkspaceSize(batch, tokens, patches, mAttrs.numPrefix), reinterpret_cast<void*>(stream));
    if (status != ALGM_STATUS_SUCCESS)
    {
        logError(std::string(kName) + " (dynamic): enqueue failed: " + algmStatusString(status));
        return -1;
    }
    return 0;
}

AlgmGbmDynamicPluginCreator::AlgmGbmDynamicPluginCreator()
    : AlgmPluginCreatorBase(AlgmGbmDynamicPlugin::kName, AlgmGbmDynamicPlugin::kVersion)
{
    mFieldNames.add("num_prefix", nvinfer1::PluginFieldType::kINT32);
    mFieldNames.add("divisor", nvinfer1::PluginFieldType::kFLOAT32);
    mFieldNames.add("plugin_version", nvinfer1::PluginFieldType::kCHAR);
    mFieldNames.add("plugin_namespace", nvinfer1::PluginFieldType::kCHAR);
}

nvinfer1::IPluginV3* AlgmGbmDynamicPluginCreator::createFromFields(
    std::string const& layer, nvinfer1::PluginFieldCollection const& fc)
{
    GbmAttributes a;
    bool seenPrefix = false;
    bool seenDivisor = false;
    bool const fieldsOk = visitPluginFields(fc, AlgmGbmDynamicPlugin::kName, AlgmGbmDynamicPlugin::kVersion, layer,
        [&](nvinfer1::PluginField const& f) {
            if (std::strcmp(f.name, "num_prefix") == 0)
            {
                seenPrefix = readIntField(f, a.numPrefix);
            }
            else if (std::strcmp(f.name, "divisor") == 0)
            {
                seenDivisor = readFloatField(f, a.divisor);
            }
            else
            {
                return FieldStatus::kUNKNOWN;
            }
            return FieldStatus::kKNOWN;
        });
    if (!fieldsOk)
    {
        return nullptr;
    }
    if (!seenPrefix || !seenDivisor)
    {
        logError(layer + ": fields num_prefix (int) and divisor (float) are required");
        return nullptr;
    }
    if (a.numPrefix < 0 || a.numPrefix > 2 || !(a.divisor > 0.0f))
    {
        logError(layer + ": unsupported attributes num_prefix=" + std::to_string(a.numPrefix) + " divisor="
            + std::to_string(a.divisor) + " (need num_prefix in {0, 1, 2}, divisor > 0)");
        return nullptr;
    }
    return new AlgmGbmDynamicPlugin(a);
}

} // namespace plugin
} // namespace algm
