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

AlgmClapPlugin::AlgmClapPlugin(ClapAttributes const& attrs)
    : mAttrs(attrs)
{
    initFields();
}

AlgmClapPlugin::AlgmClapPlugin(AlgmClapPlugin const& other)
    : AlgmPluginBase(other)
    , mAttrs(other.mAttrs)
{
    initFields();
}

void AlgmClapPlugin::initFields()
{
    mFields.clear();
    mFields.emplace_back("grid_h", &mAttrs.gridH, nvinfer1::PluginFieldType::kINT32, 1);
    mFields.emplace_back("grid_w", &mAttrs.gridW, nvinfer1::PluginFieldType::kINT32, 1);
    mFields.emplace_back("window_h", &mAttrs.windowH, nvinfer1::PluginFieldType::kINT32, 1);
    mFields.emplace_back("window_w", &mAttrs.windowW, nvinfer1::PluginFieldType::kINT32, 1);
    mFields.emplace_back("num_prefix", &mAttrs.numPrefix, nvinfer1::PluginFieldType::kINT32, 1);
    mFields.emplace_back("capacity", &mAttrs.capacity, nvinfer1::PluginFieldType::kINT32, 1);
    mFields.emplace_back("threshold", &mAttrs.threshold, nvinfer1::PluginFieldType::kFLOAT32, 1);
    publishFields();
    std::ostringstream s;
    s << kName << " grid=" << mAttrs.gridH << "x" << mAttrs.gridW << " window=" << mAttrs.windowH << "x"
      << mAttrs.windowW << " num_prefix=" << mAttrs.numPrefix << " capacity=" << mAttrs.capacity
      << " threshold=" << mAttrs.threshold;
    mMetadata = s.str();
}

bool AlgmClapPlugin::checkInputDims(nvinfer1::Dims const& dims, bool allowWildcards) const noexcept
{
    int64_t const tokens = static_cast<int64_t>(mAttrs.numPrefix) + static_cast<int64_t>(mAttrs.gridH) * mAttrs.gridW;
    if (dims.nbDims != 3)
    {
        logError(std::string(kName) + ": x must be [B, P+N, D], got rank " + std::to_string(dims.nbDims));
        return false;
    }
    if (dims.d[1] != tokens && !(allowWildcards && dims.d[1] == -1))
    {
        logError(std::string(kName) + ": x has " + std::to_string(dims.d[1]) + " tokens, expected num_prefix + "
            + "grid_h * grid_w = " + std::to_string(tokens));
        return false;
    }
    return true;
}

int32_t AlgmClapPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || in == nullptr)
    {
        return -1;
    }
    return checkInputDims(in[0].desc.dims, true) ? 0 : -1;
}

int32_t AlgmClapPlugin::getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
    nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || outputTypes == nullptr || inputTypes == nullptr)
    {
        return -1;
    }
    if (toAlgmDtype(inputTypes[0]) < 0)
    {
        logError(std::string(kName) + ": x must be float32 or float16");
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    outputTypes[1] = nvinfer1::DataType::kFLOAT;
    outputTypes[2] = nvinfer1::DataType::kINT32;
    outputTypes[3] = nvinfer1::DataType::kINT32;
    return 0;
}

int32_t AlgmClapPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || inputs == nullptr || outputs == nullptr)
    {
        return -1;
    }
    nvinfer1::DimsExprs const& x = inputs[0];
    if (x.nbDims != 3)
    {
        logError(std::string(kName) + ": x must be [B, P+N, D]");
        return -1;
    }
    int64_t const n = static_cast<int64_t>(mAttrs.gridH) * mAttrs.gridW;
    if (x.d[1]->isConstant() && x.d[1]->getConstantValue() != mAttrs.numPrefix + n)
    {
        logError(std::string(kName) + ": x has " + std::to_string(x.d[1]->getConstantValue())
            + " tokens, expected num_prefix + grid_h * grid_w = " + std::to_string(mAttrs.numPrefix + n));
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
    outputs[2].d[1] = exprBuilder.constant(n);
    outputs[3].nbDims = 2;
    outputs[3].d[0] = x.d[0];
    outputs[3].d[1] = exprBuilder.constant(2);
    return 0;
}

bool AlgmClapPlugin::supportsFormatCombination(
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
    case 1: return desc.type == inOut[0].desc.type;
    case 2: return desc.type == nvinfer1::DataType::kFLOAT;
    default: return desc.type == nvinfer1::DataType::kINT32;
    }
}

size_t AlgmClapPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
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
    return algmClapWorkspaceSize(static_cast<int32_t>(maxBatch), mAttrs.gridH, mAttrs.gridW, mAttrs.windowH,
        mAttrs.windowW, mAttrs.numPrefix, mAttrs.capacity);
}

int32_t AlgmClapPlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (in == nullptr || nbInputs != kNbInputs || nbOutputs != kNbOutputs)
    {
        return -1;
    }
    return checkInputDims(in[0].dims, false) ? 0 : -1;
}

int32_t AlgmClapPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
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
    int32_t const batch = static_cast<int32_t>(dims.d[0]);
    ClapParams p{batch, static_cast<int32_t>(dims.d[2]), mAttrs.gridH, mAttrs.gridW, mAttrs.windowH, mAttrs.windowW,
        mAttrs.numPrefix, mAttrs.capacity, mAttrs.threshold};
    size_t const wsSize = clapWorkspaceSize(
        batch, mAttrs.gridH, mAttrs.gridW, mAttrs.windowH, mAttrs.windowW, mAttrs.numPrefix, mAttrs.capacity);
    int32_t const status = clapForward(p, dtype, inputs[0], outputs[0], static_cast<float*>(outputs[1]),
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

AlgmClapPluginCreator::AlgmClapPluginCreator()
    : AlgmPluginCreatorBase(AlgmClapPlugin::kName, AlgmClapPlugin::kVersion)
{
    mFieldNames.add("grid_h", nvinfer1::PluginFieldType::kINT32);
    mFieldNames.add("grid_w", nvinfer1::PluginFieldType::kINT32);
    mFieldNames.add("window_h", nvinfer1::PluginFieldType::kINT32);
    mFieldNames.add("window_w", nvinfer1::PluginFieldType::kINT32);
    mFieldNames.add("num_prefix", nvinfer1::PluginFieldType::kINT32);
    mFieldNames.add("capacity", nvinfer1::PluginFieldType::kINT32);
    mFieldNames.add("threshold", nvinfer1::PluginFieldType::kFLOAT32);
    mFieldNames.add("plugin_version", nvinfer1::PluginFieldType::kCHAR);
    mFieldNames.add("plugin_namespace", nvinfer1::PluginFieldType::kCHAR);
}

nvinfer1::IPluginV3* AlgmClapPluginCreator::createFromFields(
    std::string const& layer, nvinfer1::PluginFieldCollection const& fc)
{
    ClapAttributes a;
    struct IntField
    {
        char const* name;
        int32_t* dst;
        bool seen;
    };
    IntField ints[] = {{"grid_h", &a.gridH, false}, {"grid_w", &a.gridW, false}, {"window_h", &a.windowH, false},
        {"window_w", &a.windowW, false}, {"num_prefix", &a.numPrefix, false}, {"capacity", &a.capacity, false}};
    bool seenThreshold = false;
    bool const fieldsOk = visitPluginFields(fc, AlgmClapPlugin::kName, AlgmClapPlugin::kVersion, layer, [&](nvinfer1::PluginField const& f) {
        for (auto& it : ints)
        {
            if (std::strcmp(f.name, it.name) == 0)
            {
                if (!readIntField(f, *it.dst))
                {
                    logError(layer + ": field " + it.name + " must be an integer");
                    return FieldStatus::kERROR;
                }
                it.seen = true;
                return FieldStatus::kKNOWN;
            }
        }
        if (std::strcmp(f.name, "threshold") == 0)
        {
            if (!readFloatField(f, a.threshold))
            {
                logError(layer + ": field threshold must be a float");
                return FieldStatus::kERROR;
            }
            seenThreshold = true;
            return FieldStatus::kKNOWN;
        }
        return FieldStatus::kUNKNOWN;
    });
    if (!fieldsOk)
    {
        return nullptr;
    }
    for (auto const& it : ints)
    {
        if (!it.seen)
        {
            logError(layer + ": missing field " + it.name);
            return nullptr;
        }
    }
    if (!seenThreshold)
    {
        logError(layer + ": missing field threshold");
        return nullptr;
    }
    if (algmClapCheckAttributes(a.gridH, a.gridW, a.windowH, a.windowW, a.numPrefix, a.capacity)
        != ALGM_STATUS_SUCCESS)
    {
        std::ostringstream s;
        s << layer << ": unsupported attributes grid=" << a.gridH << "x" << a.gridW << " window=" << a.windowH << "x"
          << a.windowW << " num_prefix=" << a.numPrefix << " capacity=" << a.capacity
          << " (need: window divides grid, 2 <= window area <= 64, grid_h*grid_w <= 8192, num_prefix in {0, 1, 2},"
             " N/k <= capacity <= N)";
        logError(s.str());
        return nullptr;
    }
    return new AlgmClapPlugin(a);
}

// ============================================================================ dynamic token mode

namespace
{

//! The dynamic plugin's serialised and creator fields: the static ones without capacity / threshold.
constexpr char const* kClapDynamicIntFields[] = {"grid_h", "grid_w", "window_h", "window_w", "num_prefix"};

} // namespace

AlgmClapDynamicPlugin::AlgmClapDynamicPlugin(ClapAttributes const& attrs)
    : mAttrs(attrs)
{
    mAttrs.capacity = mAttrs.gridH * mAttrs.gridW;
    mAttrs.threshold = 0.0f;
    initFields();
}

AlgmClapDynamicPlugin::AlgmClapDynamicPlugin(AlgmClapDynamicPlugin const& other)
    : AlgmPluginBase(other)
    , mAttrs(other.mAttrs)
{
    initFields();
}

void AlgmClapDynamicPlugin::initFields()
{
    mFields.clear();
    int32_t* const values[] = {&mAttrs.gridH, &mAttrs.gridW, &mAttrs.windowH, &mAttrs.windowW, &mAttrs.numPrefix};
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); ++i)
    {
        mFields.emplace_back(kClapDynamicIntFields[i], values[i], nvinfer1::PluginFieldType::kINT32, 1);
    }
    publishFields();
    std::ostringstream s;
    s << kName << " (dynamic) grid=" << mAttrs.gridH << "x" << mAttrs.gridW << " window=" << mAttrs.windowH << "x"
      << mAttrs.windowW << " num_prefix=" << mAttrs.numPrefix;
    mMetadata = s.str();
}

bool AlgmClapDynamicPlugin::checkInputDims(
    nvinfer1::Dims const& x, nvinfer1::Dims const& threshold, bool allowWildcards) const noexcept
{
    int64_t const tokens = static_cast<int64_t>(mAttrs.numPrefix) + static_cast<int64_t>(mAttrs.gridH) * mAttrs.gridW;
    if (x.nbDims != 3 || threshold.nbDims != 1)
    {
        logError(std::string(kName) + " (dynamic): expected x [B, P+N, D] and threshold [B]");
        return false;
    }
    if (x.d[1] != tokens && !(allowWildcards && x.d[1] == -1))
    {
        logError(std::string(kName) + " (dynamic): x has " + std::to_string(x.d[1])
            + " tokens, expected num_prefix + grid_h * grid_w = " + std::to_string(tokens));
        return false;
    }
    bool const known = !(allowWildcards && (x.d[0] == -1 || threshold.d[0] == -1));
    if (known && x.d[0] != threshold.d[0])
    {
        logError(std::string(kName) + " (dynamic): threshold must have one value per image ([B])");
        return false;
    }
    return true;
}

int32_t AlgmClapDynamicPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || in == nullptr)
    {
        return -1;
    }
    return checkInputDims(in[0].desc.dims, in[1].desc.dims, true) ? 0 : -1;
}

int32_t AlgmClapDynamicPlugin::getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
    nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || outputTypes == nullptr || inputTypes == nullptr)
    {
        return -1;
    }
    if (toAlgmDtype(inputTypes[0]) < 0 || inputTypes[1] != nvinfer1::DataType::kFLOAT)
    {
        logError(std::string(kName) + " (dynamic): x must be float32 or float16, threshold float32");
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    outputTypes[1] = nvinfer1::DataType::kFLOAT;
    outputTypes[2] = nvinfer1::DataType::kINT32;
    outputTypes[3] = nvinfer1::DataType::kINT32;
    outputTypes[4] = nvinfer1::DataType::kINT32; // size tensors are int32
    return 0;
}

int32_t AlgmClapDynamicPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || inputs == nullptr || outputs == nullptr)
    {
        return -1;
    }
    nvinfer1::DimsExprs const& x = inputs[0];
    if (x.nbDims != 3 || inputs[1].nbDims != 1)
    {
        logError(std::string(kName) + " (dynamic): expected x [B, P+N, D] and threshold [B]");
        return -1;
    }
    int64_t const n = static_cast<int64_t>(mAttrs.gridH) * mAttrs.gridW;
    if (x.d[1]->isConstant() && x.d[1]->getConstantValue() != mAttrs.numPrefix + n)
    {
        logError(std::string(kName) + " (dynamic): x has " + std::to_string(x.d[1]->getConstantValue())
            + " tokens, expected num_prefix + grid_h * grid_w = " + std::to_string(mAttrs.numPrefix + n));
        return -1;
    }
    // P + K: the token slots of the batch, written by enqueue (the size tensor is the dimension
    // itself: TensorRT refuses arithmetic on a size tensor, "condition: !y.isSizeTensor()").
    // Auto-tuned at P + 3/4 of the patches (about what the published thresholds keep on real
    // photos), at most P + N (nothing merged).
    auto const* opt = exprBuilder.constant(mAttrs.numPrefix + (3 * n + 3) / 4);
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
    outputs[2].d[1] = exprBuilder.constant(n);
    outputs[3].nbDims = 2;
    outputs[3].d[0] = x.d[0];
    outputs[3].d[1] = exprBuilder.constant(2);
    outputs[4].nbDims = 0;
    return 0;
}

bool AlgmClapDynamicPlugin::supportsFormatCombination(
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
    case 1: return desc.type == nvinfer1::DataType::kFLOAT; // threshold
    case 2: return desc.type == inOut[0].desc.type;         // y
    case 3: return desc.type == nvinfer1::DataType::kFLOAT; // size
    default: return desc.type == nvinfer1::DataType::kINT32; // assign, stats, K
    }
}

size_t AlgmClapDynamicPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
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
    return algmClapDynamicWorkspaceSize(static_cast<int32_t>(maxBatch), mAttrs.gridH, mAttrs.gridW, mAttrs.windowH,
        mAttrs.windowW, mAttrs.numPrefix);
}

int32_t AlgmClapDynamicPlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (in == nullptr || nbInputs != kNbInputs || nbOutputs != kNbOutputs)
    {
        return -1;
    }
    return checkInputDims(in[0].dims, in[1].dims, false) ? 0 : -1;
}

int32_t AlgmClapDynamicPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
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
    int32_t const batch = static_cast<int32_t>(dims.d[0]);
    // the outputs' buffers hold the upper bound (P + N rows); the kernels write [B, P+K, ...]
    int32_t const status = algmClapDynamicForward(inputs[0], static_cast<float const*>(inputs[1]), outputs[0],
        static_cast<float*>(outputs[1]), static_cast<int32_t*>(outputs[2]), static_cast<int32_t*>(outputs[3]),
        static_cast<int32_t*>(outputs[4]), batch, static_cast<int32_t>(dims.d[2]), mAttrs.gridH, mAttrs.gridW,
        mAttrs.windowH, mAttrs.windowW, mAttrs.numPrefix, dtype, workspace,
        algmClapDynamicWorkspaceSize(batch, mAttrs.gridH, mAttrs.gridW, mAttrs.windowH, mAttrs.windowW,
            mAttrs.numPrefix),
        reinterpret_cast<void*>(stream));
    if (status != ALGM_STATUS_SUCCESS)
    {
        logError(std::string(kName) + " (dynamic): enqueue failed: " + algmStatusString(status));
        return -1;
    }
    return 0;
}

AlgmClapDynamicPluginCreator::AlgmClapDynamicPluginCreator()
    : AlgmPluginCreatorBase(AlgmClapDynamicPlugin::kName, AlgmClapDynamicPlugin::kVersion)
{
    for (char const* name : kClapDynamicIntFields)
    {
        mFieldNames.add(name, nvinfer1::PluginFieldType::kINT32);
    }
    mFieldNames.add("plugin_version", nvinfer1::PluginFieldType::kCHAR);
    mFieldNames.add("plugin_namespace", nvinfer1::PluginFieldType::kCHAR);
}

nvinfer1::IPluginV3* AlgmClapDynamicPluginCreator::createFromFields(
    std::string const& layer, nvinfer1::PluginFieldCollection const& fc)
{
    ClapAttributes a;
    int32_t* const dst[] = {&a.gridH, &a.gridW, &a.windowH, &a.windowW, &a.numPrefix};
    bool seen[5] = {false, false, false, false, false};
    bool const fieldsOk = visitPluginFields(fc, AlgmClapDynamicPlugin::kName, AlgmClapDynamicPlugin::kVersion, layer,
        [&](nvinfer1::PluginField const& f) {
            for (int i = 0; i < 5; ++i)
            {
                if (std::strcmp(f.name, kClapDynamicIntFields[i]) == 0)
                {
                    if (!readIntField(f, *dst[i]))
                    {
                        logError(layer + ": field " + kClapDynamicIntFields[i] + " must be an integer");
                        return FieldStatus::kERROR;
                    }
                    seen[i] = true;
                    return FieldStatus::kKNOWN;
                }
            }
            return FieldStatus::kUNKNOWN;
        });
    if (!fieldsOk)
    {
        return nullptr;
    }
    for (int i = 0; i < 5; ++i)
    {
        if (!seen[i])
        {
            logError(layer + ": missing field " + kClapDynamicIntFields[i]);
            return nullptr;
        }
    }
    int64_t const n = static_cast<int64_t>(a.gridH) * a.gridW; // capacity N (no overflow for silly grids)
    if (algmClapCheckAttributes(a.gridH, a.gridW, a.windowH, a.windowW, a.numPrefix,
            static_cast<int32_t>(n > 0 && n <= INT32_MAX ? n : 0))
        != ALGM_STATUS_SUCCESS)
    {
        std::ostringstream s;
        s << layer << ": unsupported attributes grid=" << a.gridH << "x" << a.gridW << " window=" << a.windowH << "x"
          << a.windowW << " num_prefix=" << a.numPrefix
          << " (need: window divides grid, 2 <= window area <= 64, grid_h*grid_w <= 8192, num_prefix in {0, 1, 2})";
        logError(s.str());
        return nullptr;
    }
    return new AlgmClapDynamicPlugin(a);
}

} // namespace plugin
} // namespace algm
