/*
 * Self-test of libalgm_plugins.so without a TensorRT runtime: loads the library with dlopen,
 * takes the creators from getCreators and drives the IPluginV3 interfaces the way TensorRT
 * does (fields, serialisation round trip, output types and shapes through a stand-in
 * IExprBuilder, format combinations, workspace, configure/onShapeChange, clone), for the static
 * plugins (version "1") and the dynamic token mode plugins (version "2": the size tensor K through
 * declareSizeTensor). With --gpu and a CUDA device it also runs enqueue and compares every output
 * byte with the kernel C API.
 *
 *   algm_plugin_selftest path/to/libalgm_plugins.so [--gpu]      exit status = failed checks
 */
#include <NvInferRuntime.h>

#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace
{

int gFailures = 0;
int gChecks = 0;
int gMaxPrefix = 64; //!< algmMaxPrefix() of the library under test (set in main)

#define CHECK(cond)                                                                                                    \
    do                                                                                                                 \
    {                                                                                                                  \
        ++gChecks;                                                                                                     \
        if (!(cond))                                                                                                   \
        {                                                                                                              \
            ++gFailures;                                                                                               \
            std::fprintf(stderr, "FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond);                                     \
        }                                                                                                              \
    } while (0)

using namespace nvinfer1;

// ------------------------------------------------------------------ stand-in dimension expressions

class ConstExprImpl : public apiv::VDimensionExpr
{
public:
    ConstExprImpl(bool constant, int64_t value, bool sizeTensor = false)
        : mConstant(constant)
        , mValue(value)
        , mSizeTensor(sizeTensor)
    {
    }
    bool isConstant() const override
    {
        return mConstant;
    }
    int64_t getConstantValue() const override
    {
        return mConstant ? mValue : -1;
    }
    bool isSizeTensor() const override
    {
        return mSizeTensor;
    }

private:
    bool mConstant;
    int64_t mValue;
    bool mSizeTensor;
};

class Expr : public IDimensionExpr
{
public:
    Expr(bool constant, int64_t value, bool sizeTensor = false)
        : mOwn(constant, value, sizeTensor)
    {
        mImpl = &mOwn;
    }
    ~Expr() noexcept override = default;

private:
    ConstExprImpl mOwn;
};

//! What a plugin declared through declareSizeTensor (the last call).
struct SizeTensorDecl
{
    int32_t calls{0};
    int32_t outputIndex{-1};
    int64_t opt{-1};   //!< constant value of the opt expression, -1 when not constant
    int64_t upper{-1}; //!< constant value of the upper bound, -1 when not constant
    IDimensionExpr const* expr{nullptr};
};

class ExprBuilderImpl : public apiv::VExprBuilder
{
public:
    SizeTensorDecl sizeTensor;

    IDimensionExpr const* make(bool constant, int64_t value, bool isSize = false)
    {
        mExprs.emplace_back(new Expr(constant, value, isSize));
        return mExprs.back().get();
    }
    IDimensionExpr const* constant(int64_t value) override
    {
        return make(true, value);
    }
    IDimensionExpr const* operation(DimensionOperation, IDimensionExpr const&, IDimensionExpr const&) override
    {
        return make(false, 0);
    }
    IDimensionExpr const* declareSizeTensor(int32_t index, IDimensionExpr const& opt, IDimensionExpr const& upper) override
    {
        ++sizeTensor.calls;
        sizeTensor.outputIndex = index;
        sizeTensor.opt = opt.isConstant() ? opt.getConstantValue() : -1;
        sizeTensor.upper = upper.isConstant() ? upper.getConstantValue() : -1;
        sizeTensor.expr = make(false, 0, true);
        return sizeTensor.expr;
    }

private:
    std::vector<std::unique_ptr<Expr>> mExprs;
};

class ExprBuilder : public IExprBuilder
{
public:
    ExprBuilder()
    {
        mImpl = &mOwn;
    }
    ~ExprBuilder() noexcept override = default;
    IDimensionExpr const* symbolic()
    {
        return mOwn.make(false, 0);
    }
    SizeTensorDecl const& sizeTensor() const
    {
        return mOwn.sizeTensor;
    }

private:
    ExprBuilderImpl mOwn;
};

// ------------------------------------------------------------------ helpers

struct Fields
{
    std::vector<PluginField> list;
    std::vector<std::unique_ptr<int32_t>> ints;
    std::vector<std::unique_ptr<float>> floats;
    PluginFieldCollection fc{};

    void i(char const* name, int32_t v)
    {
        ints.emplace_back(new int32_t(v));
        list.emplace_back(name, ints.back().get(), PluginFieldType::kINT32, 1);
    }
    void f(char const* name, float v)
    {
        floats.emplace_back(new float(v));
        list.emplace_back(name, floats.back().get(), PluginFieldType::kFLOAT32, 1);
    }
    void s(char const* name, char const* v)
    {
        list.emplace_back(name, v, PluginFieldType::kCHAR, static_cast<int32_t>(std::strlen(v) + 1));
    }
    PluginFieldCollection const* get()
    {
        fc.nbFields = static_cast<int32_t>(list.size());
        fc.fields = list.data();
        return &fc;
    }
};

Dims dims(std::initializer_list<int64_t> v)
{
    Dims d{};
    d.nbDims = static_cast<int32_t>(v.size());
    int i = 0;
    for (int64_t x : v)
    {
        d.d[i++] = x;
    }
    return d;
}

DynamicPluginTensorDesc dyn(Dims d, DataType t, int64_t minB, int64_t maxB)
{
    DynamicPluginTensorDesc r{};
    r.desc.dims = d;
    r.desc.type = t;
    r.desc.format = TensorFormat::kLINEAR;
    r.desc.scale = -1.0F;
    r.min = d;
    r.opt = d;
    r.max = d;
    r.min.d[0] = minB;
    r.opt.d[0] = maxB;
    r.max.d[0] = maxB;
    return r;
}

PluginTensorDesc desc(Dims d, DataType t)
{
    PluginTensorDesc r{};
    r.dims = d;
    r.type = t;
    r.format = TensorFormat::kLINEAR;
    r.scale = -1.0F;
    return r;
}

bool sameFields(PluginFieldCollection const* a, PluginFieldCollection const* b)
{
    if (a == nullptr || b == nullptr || a->nbFields != b->nbFields)
    {
        return false;
    }
    for (int i = 0; i < a->nbFields; ++i)
    {
        PluginField const& x = a->fields[i];
        PluginField const& y = b->fields[i];
        if (std::strcmp(x.name, y.name) != 0 || x.type != y.type || x.length != y.length
            || std::memcmp(x.data, y.data, 4) != 0)
        {
            return false;
        }
    }
    return true;
}

using ClapWsFn = size_t (*)(int32_t, int32_t, int32_t, int32_t, int32_t, int32_t, int32_t);
using GbmWsFn = size_t (*)(int32_t, int32_t, int32_t, int32_t, int32_t);
using ClapFwdFn = int32_t (*)(void const*, void*, float*, int32_t*, int32_t*, int32_t, int32_t, int32_t, int32_t,
    int32_t, int32_t, int32_t, int32_t, float, int32_t, void*, size_t, void*);
using GbmFwdFn = int32_t (*)(void const*, float const*, int32_t const*, void*, float*, int32_t*, int32_t*, int32_t,
    int32_t, int32_t, int32_t, int32_t, int32_t, float, int32_t, void*, size_t, void*);

using ClapDynWsFn = size_t (*)(int32_t, int32_t, int32_t, int32_t, int32_t, int32_t);
using GbmDynWsFn = size_t (*)(int32_t, int32_t, int32_t, int32_t);
using ClapDynFwdFn = int32_t (*)(void const*, float const*, void*, float*, int32_t*, int32_t*, int32_t*, int32_t,
    int32_t, int32_t, int32_t, int32_t, int32_t, int32_t, int32_t, void*, size_t, void*);
using GbmDynFwdFn = int32_t (*)(void const*, float const*, int32_t const*, void*, float*, int32_t*, int32_t*,
    int32_t*, int32_t, int32_t, int32_t, int32_t, int32_t, float, int32_t, void*, size_t, void*);

IPluginCreatorV3One* findCreator(
    IPluginCreatorInterface* const* creators, int32_t n, char const* name, char const* version = "1")
{
    for (int32_t i = 0; i < n; ++i)
    {
        auto* c = static_cast<IPluginCreatorV3One*>(creators[i]);
        if (std::strcmp(c->getPluginName(), name) == 0 && std::strcmp(c->getPluginVersion(), version) == 0)
        {
            return c;
        }
    }
    return nullptr;
}

// ------------------------------------------------------------------ CLAP

constexpr int kGh = 8, kGw = 8, kP = 1, kD = 32, kC1 = 40, kC2 = 28;

void fillClap(Fields& f, int capacity = kC1, int numPrefix = kP)
{
    f.i("grid_h", kGh);
    f.i("grid_w", kGw);
    f.i("window_h", 2);
    f.i("window_w", 2);
    f.i("num_prefix", numPrefix);
    f.i("capacity", capacity);
    f.f("threshold", 0.9F);
    f.s("plugin_version", "1");
    f.s("plugin_namespace", "algm");
}

void fillGbm(Fields& f, int capacity = kC2, int numPrefix = kP)
{
    f.i("num_prefix", numPrefix);
    f.i("capacity", capacity);
    f.f("divisor", 5.0F);
    f.s("plugin_version", "1");
    f.s("plugin_namespace", "algm");
}

void testCreators(IPluginCreatorInterface* const* creators, int32_t n)
{
    CHECK(n == 4);
    struct Want
    {
        char const* name;
        char const* version;
        int32_t fields;
    };
    for (Want const& w : {Want{"AlgmClap", "1", 9}, Want{"AlgmGbm", "1", 5}, Want{"AlgmClap", "2", 7},
             Want{"AlgmGbm", "2", 4}})
    {
        IPluginCreatorV3One* c = findCreator(creators, n, w.name, w.version);
        CHECK(c != nullptr);
        if (c == nullptr)
        {
            continue;
        }
        CHECK(std::strcmp(c->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0);
        CHECK(std::strcmp(c->getPluginVersion(), w.version) == 0);
        CHECK(std::strcmp(c->getPluginNamespace(), "algm") == 0);
        PluginFieldCollection const* fn = c->getFieldNames();
        CHECK(fn != nullptr && fn->nbFields == w.fields);
    }
}

IPluginV3* create(IPluginCreatorV3One* c, Fields& f, TensorRTPhase phase = TensorRTPhase::kBUILD)
{
    return c->createPlugin("selftest", f.get(), phase);
}

void testClap(IPluginCreatorV3One* c, ClapWsFn clapWs)
{
    Fields good;
    fillClap(good);
    IPluginV3* p = create(c, good);
    CHECK(p != nullptr);
    if (p == nullptr)
    {
        return;
    }
    CHECK(std::strcmp(p->getInterfaceInfo().kind, "PLUGIN") == 0);
    auto* core = static_cast<IPluginV3OneCore*>(p->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* rt = static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    CHECK(core != nullptr && build != nullptr && rt != nullptr);
    CHECK(std::strcmp(core->getInterfaceInfo().kind, "PLUGIN_V3ONE_CORE") == 0);
    CHECK(std::strcmp(build->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD") == 0);
    CHECK(std::strcmp(rt->getInterfaceInfo().kind, "PLUGIN_V3ONE_RUNTIME") == 0);
    CHECK(std::strcmp(core->getPluginName(), "AlgmClap") == 0);
    CHECK(build->getNbOutputs() == 4);

    // output types
    DataType out[4];
    DataType in = DataType::kHALF;
    CHECK(build->getOutputDataTypes(out, 4, &in, 1) == 0);
    CHECK(out[0] == DataType::kHALF && out[1] == DataType::kFLOAT && out[2] == DataType::kINT32
        && out[3] == DataType::kINT32);
    in = DataType::kINT8;
    CHECK(build->getOutputDataTypes(out, 4, &in, 1) != 0);

    // output shapes
    ExprBuilder eb;
    DimsExprs x{};
    x.nbDims = 3;
    x.d[0] = eb.symbolic();
    x.d[1] = eb.constant(kP + kGh * kGw);
    x.d[2] = eb.constant(kD);
    DimsExprs outs[4];
    CHECK(build->getOutputShapes(&x, 1, nullptr, 0, outs, 4, eb) == 0);
    CHECK(outs[0].nbDims == 3 && outs[0].d[0] == x.d[0] && outs[0].d[1]->getConstantValue() == kP + kC1
        && outs[0].d[2] == x.d[2]);
    CHECK(outs[1].nbDims == 2 && outs[1].d[1]->getConstantValue() == kP + kC1);
    CHECK(outs[2].nbDims == 2 && outs[2].d[1]->getConstantValue() == kGh * kGw);
    CHECK(outs[3].nbDims == 2 && outs[3].d[1]->getConstantValue() == 2);
    x.d[1] = eb.constant(kP + kGh * kGw + 1);
    CHECK(build->getOutputShapes(&x, 1, nullptr, 0, outs, 4, eb) != 0);

    // formats
    DynamicPluginTensorDesc io[5] = {dyn(dims({-1, 65, kD}), DataType::kFLOAT, 1, 4),
        dyn(dims({-1, 41, kD}), DataType::kFLOAT, 1, 4), dyn(dims({-1, 41}), DataType::kFLOAT, 1, 4),
        dyn(dims({-1, 64}), DataType::kINT32, 1, 4), dyn(dims({-1, 2}), DataType::kINT32, 1, 4)};
    CHECK(build->supportsFormatCombination(0, io, 1, 4));
    io[0].desc.type = DataType::kHALF;
    CHECK(build->supportsFormatCombination(0, io, 1, 4));
    CHECK(!build->supportsFormatCombination(1, io, 1, 4)); // y must follow x
    io[1].desc.type = DataType::kHALF;
    CHECK(build->supportsFormatCombination(1, io, 1, 4));
    CHECK(build->supportsFormatCombination(2, io, 1, 4));
    CHECK(build->supportsFormatCombination(3, io, 1, 4));
    CHECK(build->supportsFormatCombination(4, io, 1, 4));
    io[0].desc.type = DataType::kBF16;
    CHECK(!build->supportsFormatCombination(0, io, 1, 4));
    io[0].desc.type = DataType::kFLOAT;
    io[0].desc.format = TensorFormat::kHWC;
    CHECK(!build->supportsFormatCombination(0, io, 1, 4));
    io[0].desc.format = TensorFormat::kLINEAR;
    io[3].desc.type = DataType::kINT64;
    CHECK(!build->supportsFormatCombination(3, io, 1, 4));
    io[3].desc.type = DataType::kINT32;

    // configure, workspace, shape change
    CHECK(build->configurePlugin(io, 1, io + 1, 4) == 0);
    CHECK(build->getWorkspaceSize(io, 1, io + 1, 4) == clapWs(4, kGh, kGw, 2, 2, kP, kC1));
    DynamicPluginTensorDesc bad = dyn(dims({-1, 66, kD}), DataType::kFLOAT, 1, 4);
    CHECK(build->configurePlugin(&bad, 1, io + 1, 4) != 0);
    PluginTensorDesc rin = desc(dims({3, 65, kD}), DataType::kFLOAT);
    PluginTensorDesc rout[4] = {desc(dims({3, 41, kD}), DataType::kFLOAT), desc(dims({3, 41}), DataType::kFLOAT),
        desc(dims({3, 64}), DataType::kINT32), desc(dims({3, 2}), DataType::kINT32)};
    CHECK(rt->onShapeChange(&rin, 1, rout, 4) == 0);
    rin.dims.d[1] = 64;
    CHECK(rt->onShapeChange(&rin, 1, rout, 4) != 0);

    // serialisation round trip, clone, attach
    PluginFieldCollection const* ser = rt->getFieldsToSerialize();
    CHECK(ser != nullptr && ser->nbFields == 7);
    IPluginV3* p2 = c->createPlugin("selftest-runtime", ser, TensorRTPhase::kRUNTIME);
    CHECK(p2 != nullptr);
    if (p2 != nullptr)
    {
        auto* rt2 = static_cast<IPluginV3OneRuntime*>(p2->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        CHECK(sameFields(ser, rt2->getFieldsToSerialize()));
        delete p2;
    }
    IPluginV3* cl = p->clone();
    CHECK(cl != nullptr && cl != p);
    IPluginV3* at = rt->attachToContext(nullptr);
    CHECK(at != nullptr && at != p);
    delete p; // the clones must stay valid on their own
    if (cl != nullptr)
    {
        auto* rtc = static_cast<IPluginV3OneRuntime*>(cl->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        PluginFieldCollection const* f = rtc->getFieldsToSerialize();
        CHECK(f != nullptr && f->nbFields == 7 && *static_cast<int32_t const*>(f->fields[5].data) == kC1);
        delete cl;
    }
    delete at;

    // rejected fields
    {
        Fields f;
        fillClap(f, 10); // capacity < W = 16
        CHECK(create(c, f) == nullptr);
    }
    {
        Fields f;
        f.i("grid_h", kGh);
        f.i("grid_w", kGw);
        CHECK(create(c, f) == nullptr); // missing fields
    }
    {
        Fields f;
        fillClap(f);
        f.list[7] = PluginField("plugin_version", "2", PluginFieldType::kCHAR, 2);
        CHECK(create(c, f) == nullptr);
    }
    {
        Fields f;
        fillClap(f);
        f.i("window_h", 3); // 8 % 3 != 0 (the later value wins)
        CHECK(create(c, f) == nullptr);
    }
    {
        Fields f;
        fillClap(f);
        f.i("num_prefix", gMaxPrefix + 1);
        CHECK(create(c, f) == nullptr);
    }
    {
        Fields f;
        fillClap(f);
        f.i("num_prefix", 0); // no prefix token (with_cls_token=False)
        IPluginV3* q = create(c, f);
        CHECK(q != nullptr);
        delete q;
    }
}

void testGbm(IPluginCreatorV3One* c, GbmWsFn gbmWs)
{
    Fields good;
    fillGbm(good);
    IPluginV3* p = create(c, good);
    CHECK(p != nullptr);
    if (p == nullptr)
    {
        return;
    }
    auto* build = static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* rt = static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    CHECK(build->getNbOutputs() == 4);
    DataType in[3] = {DataType::kFLOAT, DataType::kFLOAT, DataType::kINT32};
    DataType out[4];
    CHECK(build->getOutputDataTypes(out, 4, in, 3) == 0);
    CHECK(out[0] == DataType::kFLOAT && out[1] == DataType::kFLOAT && out[2] == DataType::kINT32
        && out[3] == DataType::kINT32);
    in[2] = DataType::kINT64;
    CHECK(build->getOutputDataTypes(out, 4, in, 3) != 0);

    ExprBuilder eb;
    DimsExprs xs[3]{};
    IDimensionExpr const* batch = eb.symbolic();
    xs[0].nbDims = 3;
    xs[0].d[0] = batch;
    xs[0].d[1] = eb.constant(kP + kC1);
    xs[0].d[2] = eb.constant(kD);
    xs[1].nbDims = 2;
    xs[1].d[0] = batch;
    xs[1].d[1] = xs[0].d[1];
    xs[2].nbDims = 2;
    xs[2].d[0] = batch;
    xs[2].d[1] = eb.constant(kGh * kGw);
    DimsExprs outs[4];
    CHECK(build->getOutputShapes(xs, 3, nullptr, 0, outs, 4, eb) == 0);
    CHECK(outs[0].nbDims == 3 && outs[0].d[0] == batch && outs[0].d[1]->getConstantValue() == kP + kC2);
    CHECK(outs[1].d[1]->getConstantValue() == kP + kC2 && outs[2].d[1] == xs[2].d[1]
        && outs[3].d[1]->getConstantValue() == 2);
    xs[0].d[1] = eb.constant(kP + kC2 - 1); // fewer input slots than the capacity
    CHECK(build->getOutputShapes(xs, 3, nullptr, 0, outs, 4, eb) != 0);

    DynamicPluginTensorDesc io[7] = {dyn(dims({-1, 41, kD}), DataType::kHALF, 1, 8),
        dyn(dims({-1, 41}), DataType::kFLOAT, 1, 8), dyn(dims({-1, 64}), DataType::kINT32, 1, 8),
        dyn(dims({-1, 29, kD}), DataType::kHALF, 1, 8), dyn(dims({-1, 29}), DataType::kFLOAT, 1, 8),
        dyn(dims({-1, 64}), DataType::kINT32, 1, 8), dyn(dims({-1, 2}), DataType::kINT32, 1, 8)};
    for (int pos = 0; pos < 7; ++pos)
    {
        CHECK(build->supportsFormatCombination(pos, io, 3, 4));
    }
    io[3].desc.type = DataType::kFLOAT;
    CHECK(!build->supportsFormatCombination(3, io, 3, 4));
    io[3].desc.type = DataType::kHALF;
    io[1].desc.type = DataType::kHALF;
    CHECK(!build->supportsFormatCombination(1, io, 3, 4));
    io[1].desc.type = DataType::kFLOAT;
    CHECK(build->configurePlugin(io, 3, io + 3, 4) == 0);
    CHECK(build->getWorkspaceSize(io, 3, io + 3, 4) == gbmWs(8, kP + kC1, kGh * kGw, kP, kC2));
    PluginTensorDesc rin[3] = {desc(dims({2, 41, kD}), DataType::kHALF), desc(dims({2, 41}), DataType::kFLOAT),
        desc(dims({2, 64}), DataType::kINT32)};
    CHECK(rt->onShapeChange(rin, 3, nullptr, 4) == 0);
    rin[1].dims.d[1] = 40;
    CHECK(rt->onShapeChange(rin, 3, nullptr, 4) != 0);

    PluginFieldCollection const* ser = rt->getFieldsToSerialize();
    CHECK(ser != nullptr && ser->nbFields == 3);
    IPluginV3* p2 = c->createPlugin("selftest-runtime", ser, TensorRTPhase::kRUNTIME);
    CHECK(p2 != nullptr);
    if (p2 != nullptr)
    {
        auto* rt2 = static_cast<IPluginV3OneRuntime*>(p2->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        CHECK(sameFields(ser, rt2->getFieldsToSerialize()));
        delete p2;
    }
    IPluginV3* at = rt->attachToContext(nullptr);
    CHECK(at != nullptr && at != p);
    delete at;
    delete p;
    {
        Fields f;
        fillGbm(f, 0);
        CHECK(create(c, f) == nullptr);
    }
    {
        Fields f;
        f.i("num_prefix", gMaxPrefix + 1);
        f.i("capacity", 5);
        f.f("divisor", 5.0F);
        CHECK(create(c, f) == nullptr);
    }
    {
        Fields f;
        f.i("num_prefix", 1);
        f.i("capacity", 5);
        CHECK(create(c, f) == nullptr); // divisor missing
    }
    {
        Fields f;
        f.i("num_prefix", 0); // no prefix token (with_cls_token=False)
        f.i("capacity", 5);
        f.f("divisor", 5.0F);
        IPluginV3* q = create(c, f);
        CHECK(q != nullptr);
        delete q;
    }
}

// ------------------------------------------------------------------ dynamic token mode (version "2")

void fillClapDynamic(Fields& f, int numPrefix = kP)
{
    f.i("grid_h", kGh);
    f.i("grid_w", kGw);
    f.i("window_h", 2);
    f.i("window_w", 2);
    f.i("num_prefix", numPrefix);
    f.s("plugin_version", "2");
    f.s("plugin_namespace", "algm");
}

void fillGbmDynamic(Fields& f, int numPrefix = kP)
{
    f.i("num_prefix", numPrefix);
    f.f("divisor", 5.0F);
    f.s("plugin_version", "2");
    f.s("plugin_namespace", "algm");
}

void testClapDynamic(IPluginCreatorV3One* c, ClapDynWsFn ws)
{
    Fields good;
    fillClapDynamic(good);
    IPluginV3* p = create(c, good);
    CHECK(p != nullptr);
    if (p == nullptr)
    {
        return;
    }
    auto* core = static_cast<IPluginV3OneCore*>(p->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* rt = static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    CHECK(std::strcmp(core->getPluginName(), "AlgmClap") == 0 && std::strcmp(core->getPluginVersion(), "2") == 0);
    CHECK(build->getNbOutputs() == 5);

    DataType in[2] = {DataType::kHALF, DataType::kFLOAT};
    DataType out[5];
    CHECK(build->getOutputDataTypes(out, 5, in, 2) == 0);
    CHECK(out[0] == DataType::kHALF && out[1] == DataType::kFLOAT && out[2] == DataType::kINT32
        && out[3] == DataType::kINT32 && out[4] == DataType::kINT32);
    in[1] = DataType::kHALF; // the threshold is float32
    CHECK(build->getOutputDataTypes(out, 5, in, 2) != 0);

    // output shapes: the token axis P + K is a size tensor (output 4, 0-D), upper bound P + N
    ExprBuilder eb;
    DimsExprs xs[2]{};
    xs[0].nbDims = 3;
    xs[0].d[0] = eb.symbolic();
    xs[0].d[1] = eb.constant(kP + kGh * kGw);
    xs[0].d[2] = eb.constant(kD);
    xs[1].nbDims = 1;
    xs[1].d[0] = xs[0].d[0];
    DimsExprs outs[5];
    CHECK(build->getOutputShapes(xs, 2, nullptr, 0, outs, 5, eb) == 0);
    SizeTensorDecl const& st = eb.sizeTensor();
    CHECK(st.calls == 1 && st.outputIndex == 4 && st.upper == kP + kGh * kGw && st.opt > kP && st.opt <= st.upper);
    CHECK(outs[0].nbDims == 3 && outs[0].d[0] == xs[0].d[0] && outs[0].d[1] == st.expr && outs[0].d[2] == xs[0].d[2]);
    CHECK(outs[1].nbDims == 2 && outs[1].d[1] == outs[0].d[1]);
    CHECK(outs[2].nbDims == 2 && outs[2].d[1]->getConstantValue() == kGh * kGw);
    CHECK(outs[3].nbDims == 2 && outs[3].d[1]->getConstantValue() == 2);
    CHECK(outs[4].nbDims == 0);
    xs[0].d[1] = eb.constant(kP + kGh * kGw + 1);
    CHECK(build->getOutputShapes(xs, 2, nullptr, 0, outs, 5, eb) != 0);
    xs[0].d[1] = eb.constant(kP + kGh * kGw);
    xs[1].nbDims = 2; // threshold must be [B]
    CHECK(build->getOutputShapes(xs, 2, nullptr, 0, outs, 5, eb) != 0);

    // formats: x, threshold | y, size, assign, stats, K
    DynamicPluginTensorDesc io[7] = {dyn(dims({-1, 65, kD}), DataType::kFLOAT, 1, 4),
        dyn(dims({-1}), DataType::kFLOAT, 1, 4), dyn(dims({-1, -1, kD}), DataType::kFLOAT, 1, 4),
        dyn(dims({-1, -1}), DataType::kFLOAT, 1, 4), dyn(dims({-1, 64}), DataType::kINT32, 1, 4),
        dyn(dims({-1, 2}), DataType::kINT32, 1, 4), DynamicPluginTensorDesc{}};
    io[6].desc.type = DataType::kINT32;
    io[6].desc.format = TensorFormat::kLINEAR;
    for (int pos = 0; pos < 7; ++pos)
    {
        CHECK(build->supportsFormatCombination(pos, io, 2, 5));
    }
    io[1].desc.type = DataType::kHALF;
    CHECK(!build->supportsFormatCombination(1, io, 2, 5));
    io[1].desc.type = DataType::kFLOAT;
    io[2].desc.type = DataType::kHALF;
    CHECK(!build->supportsFormatCombination(2, io, 2, 5)); // y follows x
    io[2].desc.type = DataType::kFLOAT;
    io[6].desc.type = DataType::kINT64;
    CHECK(!build->supportsFormatCombination(6, io, 2, 5)); // size tensors are int32
    io[6].desc.type = DataType::kINT32;

    CHECK(build->configurePlugin(io, 2, io + 2, 5) == 0);
    CHECK(build->getWorkspaceSize(io, 2, io + 2, 5) == ws(4, kGh, kGw, 2, 2, kP));
    CHECK(ws(4, kGh, kGw, 2, 2, kP) > 0);
    PluginTensorDesc rin[2] = {desc(dims({3, 65, kD}), DataType::kFLOAT), desc(dims({3}), DataType::kFLOAT)};
    CHECK(rt->onShapeChange(rin, 2, nullptr, 5) == 0);
    rin[1].dims.d[0] = 2; // one threshold per image
    CHECK(rt->onShapeChange(rin, 2, nullptr, 5) != 0);

    PluginFieldCollection const* ser = rt->getFieldsToSerialize();
    CHECK(ser != nullptr && ser->nbFields == 5);
    IPluginV3* p2 = c->createPlugin("selftest-runtime", ser, TensorRTPhase::kRUNTIME);
    CHECK(p2 != nullptr);
    if (p2 != nullptr)
    {
        auto* rt2 = static_cast<IPluginV3OneRuntime*>(p2->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        CHECK(sameFields(ser, rt2->getFieldsToSerialize()));
        delete p2;
    }
    IPluginV3* cl = p->clone();
    CHECK(cl != nullptr && cl != p);
    delete p;
    delete cl;
    {
        Fields f;
        fillClapDynamic(f);
        f.list[5] = PluginField("plugin_version", "1", PluginFieldType::kCHAR, 2); // a static node
        CHECK(create(c, f) == nullptr);
    }
    {
        Fields f;
        fillClapDynamic(f);
        f.i("window_h", 3);
        CHECK(create(c, f) == nullptr);
    }
    {
        Fields f;
        f.i("grid_h", kGh);
        CHECK(create(c, f) == nullptr); // missing fields
    }
    {
        Fields f;
        fillClapDynamic(f);
        f.i("num_prefix", 0);
        IPluginV3* q = create(c, f);
        CHECK(q != nullptr);
        delete q;
    }
}

void testGbmDynamic(IPluginCreatorV3One* c, GbmDynWsFn ws)
{
    Fields good;
    fillGbmDynamic(good);
    IPluginV3* p = create(c, good);
    CHECK(p != nullptr);
    if (p == nullptr)
    {
        return;
    }
    auto* build = static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* rt = static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    CHECK(build->getNbOutputs() == 5);
    DataType in[3] = {DataType::kFLOAT, DataType::kFLOAT, DataType::kINT32};
    DataType out[5];
    CHECK(build->getOutputDataTypes(out, 5, in, 3) == 0);
    CHECK(out[0] == DataType::kFLOAT && out[4] == DataType::kINT32);

    // the input token axis is itself data-dependent (CLAP's P + K1)
    ExprBuilder eb;
    DimsExprs xs[3]{};
    IDimensionExpr const* batch = eb.symbolic();
    IDimensionExpr const* tokens = eb.symbolic();
    xs[0].nbDims = 3;
    xs[0].d[0] = batch;
    xs[0].d[1] = tokens;
    xs[0].d[2] = eb.constant(kD);
    xs[1].nbDims = 2;
    xs[1].d[0] = batch;
    xs[1].d[1] = tokens;
    xs[2].nbDims = 2;
    xs[2].d[0] = batch;
    xs[2].d[1] = eb.constant(kGh * kGw);
    DimsExprs outs[5];
    CHECK(build->getOutputShapes(xs, 3, nullptr, 0, outs, 5, eb) == 0);
    SizeTensorDecl const& st = eb.sizeTensor();
    CHECK(st.calls == 1 && st.outputIndex == 4 && st.upper == kP + kGh * kGw && st.opt > kP && st.opt <= st.upper);
    CHECK(outs[0].nbDims == 3 && outs[0].d[0] == batch && outs[0].d[1] == st.expr);
    CHECK(outs[2].d[1] == xs[2].d[1] && outs[3].d[1]->getConstantValue() == 2 && outs[4].nbDims == 0);

    int const tMax = kP + kGh * kGw;
    DynamicPluginTensorDesc io[8] = {dyn(dims({-1, -1, kD}), DataType::kHALF, 1, 8),
        dyn(dims({-1, -1}), DataType::kFLOAT, 1, 8), dyn(dims({-1, 64}), DataType::kINT32, 1, 8),
        dyn(dims({-1, -1, kD}), DataType::kHALF, 1, 8), dyn(dims({-1, -1}), DataType::kFLOAT, 1, 8),
        dyn(dims({-1, 64}), DataType::kINT32, 1, 8), dyn(dims({-1, 2}), DataType::kINT32, 1, 8),
        DynamicPluginTensorDesc{}};
    io[7].desc.type = DataType::kINT32;
    io[7].desc.format = TensorFormat::kLINEAR;
    for (int i : {0, 1})
    {
        io[i].max.d[1] = tMax; // the upper bound TensorRT derives from CLAP's size tensor
        io[i].min.d[1] = 17;
        io[i].opt.d[1] = 49;
    }
    for (int pos = 0; pos < 8; ++pos)
    {
        CHECK(build->supportsFormatCombination(pos, io, 3, 5));
    }
    io[3].desc.type = DataType::kFLOAT;
    CHECK(!build->supportsFormatCombination(3, io, 3, 5));
    io[3].desc.type = DataType::kHALF;
    CHECK(build->configurePlugin(io, 3, io + 3, 5) == 0);
    size_t const need = ws(8, tMax, kGh * kGw, kP);
    CHECK(build->getWorkspaceSize(io, 3, io + 3, 5) == need && need > 0);
    // any T below the bound fits the workspace sized for the bound
    bool fits = true;
    for (int t = kP + 1; t <= tMax; ++t)
    {
        fits = fits && ws(8, t, kGh * kGw, kP) <= need;
    }
    CHECK(fits);
    PluginTensorDesc rin[3] = {desc(dims({2, 37, kD}), DataType::kHALF), desc(dims({2, 37}), DataType::kFLOAT),
        desc(dims({2, 64}), DataType::kINT32)};
    CHECK(rt->onShapeChange(rin, 3, nullptr, 5) == 0);
    rin[1].dims.d[1] = 36;
    CHECK(rt->onShapeChange(rin, 3, nullptr, 5) != 0);

    PluginFieldCollection const* ser = rt->getFieldsToSerialize();
    CHECK(ser != nullptr && ser->nbFields == 2);
    IPluginV3* p2 = c->createPlugin("selftest-runtime", ser, TensorRTPhase::kRUNTIME);
    CHECK(p2 != nullptr);
    if (p2 != nullptr)
    {
        auto* rt2 = static_cast<IPluginV3OneRuntime*>(p2->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        CHECK(sameFields(ser, rt2->getFieldsToSerialize()));
        delete p2;
    }
    delete p;
    {
        Fields f;
        f.i("num_prefix", 1);
        CHECK(create(c, f) == nullptr); // divisor missing
    }
    {
        Fields f;
        f.i("num_prefix", gMaxPrefix + 1);
        f.f("divisor", 5.0F);
        CHECK(create(c, f) == nullptr);
    }
}

// ------------------------------------------------------------------ any number of prefix tokens

//! Serialises `p` and creates it again from its fields: the same fields, num_prefix included.
bool roundTrips(IPluginCreatorV3One* c, IPluginV3* p, int numPrefix)
{
    auto* rt = static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    PluginFieldCollection const* ser = rt->getFieldsToSerialize();
    bool found = false;
    for (int i = 0; ser != nullptr && i < ser->nbFields; ++i)
    {
        if (std::strcmp(ser->fields[i].name, "num_prefix") == 0)
        {
            found = *static_cast<int32_t const*>(ser->fields[i].data) == numPrefix;
        }
    }
    IPluginV3* p2 = c->createPlugin("selftest-runtime", ser, TensorRTPhase::kRUNTIME);
    bool ok = found && p2 != nullptr;
    if (p2 != nullptr)
    {
        auto* rt2 = static_cast<IPluginV3OneRuntime*>(p2->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        ok = ok && sameFields(ser, rt2->getFieldsToSerialize());
        delete p2;
    }
    return ok;
}

//! P prefix tokens (class, distillation, register tokens), any P up to algmMaxPrefix(): every creator
//! accepts it, the shapes carry P in front, the workspace is the C API's for that P, the fields round
//! trip; P = algmMaxPrefix() + 1 and P = -1 are refused by all four creators.
void testPrefixCounts(IPluginCreatorV3One* clapC, IPluginCreatorV3One* gbmC, IPluginCreatorV3One* clapDynC,
    IPluginCreatorV3One* gbmDynC, void* lib)
{
    auto clapWs = reinterpret_cast<ClapWsFn>(dlsym(lib, "algmClapWorkspaceSize"));
    auto gbmWs = reinterpret_cast<GbmWsFn>(dlsym(lib, "algmGbmWorkspaceSize"));
    auto clapDynWs = reinterpret_cast<ClapDynWsFn>(dlsym(lib, "algmClapDynamicWorkspaceSize"));
    auto gbmDynWs = reinterpret_cast<GbmDynWsFn>(dlsym(lib, "algmGbmDynamicWorkspaceSize"));
    CHECK(clapWs && gbmWs && clapDynWs && gbmDynWs);
    if (!(clapWs && gbmWs && clapDynWs && gbmDynWs))
    {
        return;
    }
    int const N = kGh * kGw;
    for (int P : {0, 1, 2, 3, 4, 5, 9, 16, gMaxPrefix})
    {
        // AlgmClap, version 1: x [B, P+N, D] -> y [B, P+C1, D]
        {
            Fields f;
            fillClap(f, kC1, P);
            IPluginV3* p = create(clapC, f);
            CHECK(p != nullptr);
            if (p != nullptr)
            {
                auto* build = static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
                auto* rt = static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
                ExprBuilder eb;
                DimsExprs x{};
                x.nbDims = 3;
                x.d[0] = eb.symbolic();
                x.d[1] = eb.constant(P + N);
                x.d[2] = eb.constant(kD);
                DimsExprs outs[4];
                CHECK(build->getOutputShapes(&x, 1, nullptr, 0, outs, 4, eb) == 0);
                CHECK(outs[0].d[1]->getConstantValue() == P + kC1 && outs[1].d[1]->getConstantValue() == P + kC1);
                CHECK(outs[2].d[1]->getConstantValue() == N);
                x.d[1] = eb.constant(P + N + 1);
                CHECK(build->getOutputShapes(&x, 1, nullptr, 0, outs, 4, eb) != 0);
                DynamicPluginTensorDesc io[5] = {dyn(dims({-1, P + N, kD}), DataType::kHALF, 1, 4),
                    dyn(dims({-1, P + kC1, kD}), DataType::kHALF, 1, 4), dyn(dims({-1, P + kC1}), DataType::kFLOAT, 1, 4),
                    dyn(dims({-1, N}), DataType::kINT32, 1, 4), dyn(dims({-1, 2}), DataType::kINT32, 1, 4)};
                CHECK(build->configurePlugin(io, 1, io + 1, 4) == 0);
                CHECK(build->getWorkspaceSize(io, 1, io + 1, 4) == clapWs(4, kGh, kGw, 2, 2, P, kC1));
                CHECK(clapWs(4, kGh, kGw, 2, 2, P, kC1) > 0);
                PluginTensorDesc rin = desc(dims({3, P + N, kD}), DataType::kHALF);
                CHECK(rt->onShapeChange(&rin, 1, nullptr, 4) == 0);
                rin.dims.d[1] = P + N - 1;
                CHECK(rt->onShapeChange(&rin, 1, nullptr, 4) != 0);
                CHECK(roundTrips(clapC, p, P));
                delete p;
            }
        }
        // AlgmGbm, version 1: x [B, P+C1, D] -> y [B, P+C2, D]
        {
            Fields f;
            fillGbm(f, kC2, P);
            IPluginV3* p = create(gbmC, f);
            CHECK(p != nullptr);
            if (p != nullptr)
            {
                auto* build = static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
                auto* rt = static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
                ExprBuilder eb;
                DimsExprs xs[3]{};
                IDimensionExpr const* batch = eb.symbolic();
                xs[0].nbDims = 3;
                xs[0].d[0] = batch;
                xs[0].d[1] = eb.constant(P + kC1);
                xs[0].d[2] = eb.constant(kD);
                xs[1].nbDims = 2;
                xs[1].d[0] = batch;
                xs[1].d[1] = xs[0].d[1];
                xs[2].nbDims = 2;
                xs[2].d[0] = batch;
                xs[2].d[1] = eb.constant(N);
                DimsExprs outs[4];
                CHECK(build->getOutputShapes(xs, 3, nullptr, 0, outs, 4, eb) == 0);
                CHECK(outs[0].d[1]->getConstantValue() == P + kC2 && outs[1].d[1]->getConstantValue() == P + kC2);
                DynamicPluginTensorDesc io[7] = {dyn(dims({-1, P + kC1, kD}), DataType::kFLOAT, 1, 8),
                    dyn(dims({-1, P + kC1}), DataType::kFLOAT, 1, 8), dyn(dims({-1, N}), DataType::kINT32, 1, 8),
                    dyn(dims({-1, P + kC2, kD}), DataType::kFLOAT, 1, 8), dyn(dims({-1, P + kC2}), DataType::kFLOAT, 1, 8),
                    dyn(dims({-1, N}), DataType::kINT32, 1, 8), dyn(dims({-1, 2}), DataType::kINT32, 1, 8)};
                CHECK(build->configurePlugin(io, 3, io + 3, 4) == 0);
                CHECK(build->getWorkspaceSize(io, 3, io + 3, 4) == gbmWs(8, P + kC1, N, P, kC2));
                CHECK(gbmWs(8, P + kC1, N, P, kC2) > 0);
                PluginTensorDesc rin[3] = {desc(dims({2, P + kC1, kD}), DataType::kFLOAT),
                    desc(dims({2, P + kC1}), DataType::kFLOAT), desc(dims({2, N}), DataType::kINT32)};
                CHECK(rt->onShapeChange(rin, 3, nullptr, 4) == 0);
                CHECK(roundTrips(gbmC, p, P));
                delete p;
            }
        }
        // AlgmClap, version 2: the size tensor P + K, upper bound P + N
        {
            Fields f;
            fillClapDynamic(f, P);
            IPluginV3* p = create(clapDynC, f);
            CHECK(p != nullptr);
            if (p != nullptr)
            {
                auto* build = static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
                ExprBuilder eb;
                DimsExprs xs[2]{};
                xs[0].nbDims = 3;
                xs[0].d[0] = eb.symbolic();
                xs[0].d[1] = eb.constant(P + N);
                xs[0].d[2] = eb.constant(kD);
                xs[1].nbDims = 1;
                xs[1].d[0] = xs[0].d[0];
                DimsExprs outs[5];
                CHECK(build->getOutputShapes(xs, 2, nullptr, 0, outs, 5, eb) == 0);
                SizeTensorDecl const& st = eb.sizeTensor();
                CHECK(st.calls == 1 && st.upper == P + N && st.opt > P && st.opt <= st.upper);
                DynamicPluginTensorDesc io[7] = {dyn(dims({-1, P + N, kD}), DataType::kFLOAT, 1, 4),
                    dyn(dims({-1}), DataType::kFLOAT, 1, 4), dyn(dims({-1, -1, kD}), DataType::kFLOAT, 1, 4),
                    dyn(dims({-1, -1}), DataType::kFLOAT, 1, 4), dyn(dims({-1, N}), DataType::kINT32, 1, 4),
                    dyn(dims({-1, 2}), DataType::kINT32, 1, 4), DynamicPluginTensorDesc{}};
                io[6].desc.type = DataType::kINT32;
                io[6].desc.format = TensorFormat::kLINEAR;
                CHECK(build->configurePlugin(io, 2, io + 2, 5) == 0);
                CHECK(build->getWorkspaceSize(io, 2, io + 2, 5) == clapDynWs(4, kGh, kGw, 2, 2, P));
                CHECK(clapDynWs(4, kGh, kGw, 2, 2, P) > 0);
                CHECK(roundTrips(clapDynC, p, P));
                delete p;
            }
        }
        // AlgmGbm, version 2: input tokens up to P + N, the size tensor P + K2
        {
            Fields f;
            fillGbmDynamic(f, P);
            IPluginV3* p = create(gbmDynC, f);
            CHECK(p != nullptr);
            if (p != nullptr)
            {
                auto* build = static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
                ExprBuilder eb;
                DimsExprs xs[3]{};
                IDimensionExpr const* batch = eb.symbolic();
                IDimensionExpr const* tokens = eb.symbolic();
                xs[0].nbDims = 3;
                xs[0].d[0] = batch;
                xs[0].d[1] = tokens;
                xs[0].d[2] = eb.constant(kD);
                xs[1].nbDims = 2;
                xs[1].d[0] = batch;
                xs[1].d[1] = tokens;
                xs[2].nbDims = 2;
                xs[2].d[0] = batch;
                xs[2].d[1] = eb.constant(N);
                DimsExprs outs[5];
                CHECK(build->getOutputShapes(xs, 3, nullptr, 0, outs, 5, eb) == 0);
                SizeTensorDecl const& st = eb.sizeTensor();
                CHECK(st.calls == 1 && st.upper == P + N && st.opt > P && st.opt <= st.upper);
                int const tMax = P + N;
                DynamicPluginTensorDesc io[8] = {dyn(dims({-1, -1, kD}), DataType::kFLOAT, 1, 8),
                    dyn(dims({-1, -1}), DataType::kFLOAT, 1, 8), dyn(dims({-1, N}), DataType::kINT32, 1, 8),
                    dyn(dims({-1, -1, kD}), DataType::kFLOAT, 1, 8), dyn(dims({-1, -1}), DataType::kFLOAT, 1, 8),
                    dyn(dims({-1, N}), DataType::kINT32, 1, 8), dyn(dims({-1, 2}), DataType::kINT32, 1, 8),
                    DynamicPluginTensorDesc{}};
                io[7].desc.type = DataType::kINT32;
                io[7].desc.format = TensorFormat::kLINEAR;
                for (int i : {0, 1})
                {
                    io[i].max.d[1] = tMax;
                    io[i].min.d[1] = P + 1;
                    io[i].opt.d[1] = P + N / 2;
                }
                CHECK(build->configurePlugin(io, 3, io + 3, 5) == 0);
                CHECK(build->getWorkspaceSize(io, 3, io + 3, 5) == gbmDynWs(8, tMax, N, P));
                CHECK(gbmDynWs(8, tMax, N, P) > 0);
                CHECK(roundTrips(gbmDynC, p, P));
                delete p;
            }
        }
    }
    // above the limit (and negative): refused by every creator, with a message naming the limit
    for (int P : {gMaxPrefix + 1, -1})
    {
        Fields a;
        fillClap(a, kC1, P);
        CHECK(create(clapC, a) == nullptr);
        Fields b;
        fillGbm(b, kC2, P);
        CHECK(create(gbmC, b) == nullptr);
        Fields c;
        fillClapDynamic(c, P);
        CHECK(create(clapDynC, c) == nullptr);
        Fields d;
        fillGbmDynamic(d, P);
        CHECK(create(gbmDynC, d) == nullptr);
    }
}

// ------------------------------------------------------------------ GPU: enqueue == C API

template <typename T>
T* devAlloc(size_t n)
{
    void* p = nullptr;
    return cudaMalloc(&p, n * sizeof(T) + 1) == cudaSuccess ? static_cast<T*>(p) : nullptr;
}

bool sameDevice(void const* a, void const* b, size_t bytes)
{
    std::vector<unsigned char> ha(bytes), hb(bytes);
    cudaMemcpy(ha.data(), a, bytes, cudaMemcpyDeviceToHost);
    cudaMemcpy(hb.data(), b, bytes, cudaMemcpyDeviceToHost);
    return std::memcmp(ha.data(), hb.data(), bytes) == 0;
}

void testGpu(IPluginCreatorV3One* clapC, IPluginCreatorV3One* gbmC, void* lib, int const P)
{
    auto clapWs = reinterpret_cast<ClapWsFn>(dlsym(lib, "algmClapWorkspaceSize"));
    auto gbmWs = reinterpret_cast<GbmWsFn>(dlsym(lib, "algmGbmWorkspaceSize"));
    auto clapFwd = reinterpret_cast<ClapFwdFn>(dlsym(lib, "algmClapForward"));
    auto gbmFwd = reinterpret_cast<GbmFwdFn>(dlsym(lib, "algmGbmForward"));
    CHECK(clapWs && gbmWs && clapFwd && gbmFwd);
    int const B = 3, T = P + kGh * kGw, T1 = P + kC1, T2 = P + kC2, N = kGh * kGw;
    std::vector<float> hx(static_cast<size_t>(B) * T * kD);
    std::mt19937 rng(1);
    std::normal_distribution<float> nd;
    for (size_t i = 0; i < hx.size(); ++i)
    {
        // smooth-ish: neighbouring patches share a component, so that merges happen
        size_t const tok = (i / kD) % T;
        hx[i] = nd(rng) * 0.3F + static_cast<float>((tok / 3) % 5) * 0.5F;
    }
    float* x = devAlloc<float>(hx.size());
    cudaMemcpy(x, hx.data(), hx.size() * sizeof(float), cudaMemcpyHostToDevice);
    // plugin path
    float* y1 = devAlloc<float>(B * T1 * kD);
    float* s1 = devAlloc<float>(B * T1);
    int32_t* a1 = devAlloc<int32_t>(B * N);
    int32_t* st1 = devAlloc<int32_t>(B * 2);
    float* y2 = devAlloc<float>(B * T2 * kD);
    float* s2 = devAlloc<float>(B * T2);
    int32_t* a2 = devAlloc<int32_t>(B * N);
    int32_t* st2 = devAlloc<int32_t>(B * 2);
    // C API path
    float* ry1 = devAlloc<float>(B * T1 * kD);
    float* rs1 = devAlloc<float>(B * T1);
    int32_t* ra1 = devAlloc<int32_t>(B * N);
    int32_t* rst1 = devAlloc<int32_t>(B * 2);
    float* ry2 = devAlloc<float>(B * T2 * kD);
    float* rs2 = devAlloc<float>(B * T2);
    int32_t* ra2 = devAlloc<int32_t>(B * N);
    int32_t* rst2 = devAlloc<int32_t>(B * 2);
    size_t const wsBytes = clapWs(8, kGh, kGw, 2, 2, P, kC1) + gbmWs(8, T1, N, P, kC2);
    void* ws = devAlloc<unsigned char>(wsBytes);
    cudaStream_t stream;
    cudaStreamCreate(&stream);

    Fields fc;
    fillClap(fc, kC1, P);
    Fields fg;
    fillGbm(fg, kC2, P);
    IPluginV3* clap = create(clapC, fc, TensorRTPhase::kRUNTIME);
    IPluginV3* gbm = create(gbmC, fg, TensorRTPhase::kRUNTIME);
    CHECK(clap != nullptr && gbm != nullptr);
    auto* rc = static_cast<IPluginV3OneRuntime*>(clap->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    auto* rg = static_cast<IPluginV3OneRuntime*>(gbm->getCapabilityInterface(PluginCapabilityType::kRUNTIME));

    PluginTensorDesc cin = desc(dims({B, T, kD}), DataType::kFLOAT);
    PluginTensorDesc cout[4] = {desc(dims({B, T1, kD}), DataType::kFLOAT), desc(dims({B, T1}), DataType::kFLOAT),
        desc(dims({B, N}), DataType::kINT32), desc(dims({B, 2}), DataType::kINT32)};
    void const* cins[1] = {x};
    void* couts[4] = {y1, s1, a1, st1};
    CHECK(rc->onShapeChange(&cin, 1, cout, 4) == 0);
    CHECK(rc->enqueue(&cin, cout, cins, couts, ws, stream) == 0);
    PluginTensorDesc gin[3] = {cout[0], cout[1], cout[2]};
    PluginTensorDesc gout[4] = {desc(dims({B, T2, kD}), DataType::kFLOAT), desc(dims({B, T2}), DataType::kFLOAT),
        desc(dims({B, N}), DataType::kINT32), desc(dims({B, 2}), DataType::kINT32)};
    void const* gins[3] = {y1, s1, a1};
    void* gouts[4] = {y2, s2, a2, st2};
    CHECK(rg->onShapeChange(gin, 3, gout, 4) == 0);
    CHECK(rg->enqueue(gin, gout, gins, gouts, ws, stream) == 0);
    CHECK(cudaStreamSynchronize(stream) == cudaSuccess);

    CHECK(clapFwd(x, ry1, rs1, ra1, rst1, B, kD, kGh, kGw, 2, 2, P, kC1, 0.9F, 0, ws, wsBytes, stream) == 0);
    CHECK(gbmFwd(ry1, rs1, ra1, ry2, rs2, ra2, rst2, B, T1, N, kD, P, kC2, 5.0F, 0, ws, wsBytes, stream) == 0);
    CHECK(cudaStreamSynchronize(stream) == cudaSuccess);
    CHECK(sameDevice(y1, ry1, sizeof(float) * B * T1 * kD) && sameDevice(s1, rs1, sizeof(float) * B * T1));
    CHECK(sameDevice(a1, ra1, sizeof(int32_t) * B * N) && sameDevice(st1, rst1, sizeof(int32_t) * B * 2));
    CHECK(sameDevice(y2, ry2, sizeof(float) * B * T2 * kD) && sameDevice(s2, rs2, sizeof(float) * B * T2));
    CHECK(sameDevice(a2, ra2, sizeof(int32_t) * B * N) && sameDevice(st2, rst2, sizeof(int32_t) * B * 2));
    std::vector<int32_t> stats(B * 2);
    cudaMemcpy(stats.data(), st1, sizeof(int32_t) * B * 2, cudaMemcpyDeviceToHost);
    CHECK(stats[0] >= (N - kC1 + 2) / 3); // at least the forced merges
    delete clap;
    delete gbm;
    cudaStreamDestroy(stream);
    for (void* ptr : {static_cast<void*>(x), static_cast<void*>(y1), static_cast<void*>(s1), static_cast<void*>(a1),
             static_cast<void*>(st1), static_cast<void*>(y2), static_cast<void*>(s2), static_cast<void*>(a2),
             static_cast<void*>(st2), static_cast<void*>(ry1), static_cast<void*>(rs1), static_cast<void*>(ra1),
             static_cast<void*>(rst1), static_cast<void*>(ry2), static_cast<void*>(rs2), static_cast<void*>(ra2),
             static_cast<void*>(rst2), ws})
    {
        cudaFree(ptr);
    }
}

//! Dynamic token mode on the GPU: the version-2 plugins' enqueue writes the bytes of the C API
//! (y / size as [B, P+K, ...] inside buffers of the upper-bound size, K in the size tensor).
void testGpuDynamic(IPluginCreatorV3One* clapC, IPluginCreatorV3One* gbmC, void* lib, int const P)
{
    auto clapWs = reinterpret_cast<ClapDynWsFn>(dlsym(lib, "algmClapDynamicWorkspaceSize"));
    auto gbmWs = reinterpret_cast<GbmDynWsFn>(dlsym(lib, "algmGbmDynamicWorkspaceSize"));
    auto clapFwd = reinterpret_cast<ClapDynFwdFn>(dlsym(lib, "algmClapDynamicForward"));
    auto gbmFwd = reinterpret_cast<GbmDynFwdFn>(dlsym(lib, "algmGbmDynamicForward"));
    CHECK(clapWs && gbmWs && clapFwd && gbmFwd);
    if (!(clapWs && gbmWs && clapFwd && gbmFwd))
    {
        return;
    }
    int const B = 3, N = kGh * kGw, T = P + N;
    std::vector<float> hx(static_cast<size_t>(B) * T * kD);
    std::mt19937 rng(2);
    std::normal_distribution<float> nd;
    for (size_t i = 0; i < hx.size(); ++i)
    {
        size_t const tok = (i / kD) % T;
        hx[i] = nd(rng) * 0.1F + static_cast<float>((tok / 3) % 5) * 0.5F;
    }
    float const hthr[B] = {0.6F, 0.8F, 0.95F}; // one threshold per image
    float* x = devAlloc<float>(hx.size());
    float* thr = devAlloc<float>(B);
    cudaMemcpy(x, hx.data(), hx.size() * sizeof(float), cudaMemcpyHostToDevice);
    cudaMemcpy(thr, hthr, sizeof(hthr), cudaMemcpyHostToDevice);
    // [plugin, C API] x [y1, s1, a1, st1, k1, y2, s2, a2, st2, k2]; buffers of the upper bound
    std::vector<void*> bufs;
    auto alloc = [&](size_t bytes) {
        void* q = devAlloc<unsigned char>(bytes);
        cudaMemset(q, 0, bytes);
        bufs.push_back(q);
        return q;
    };
    void* out[2][10];
    for (auto& o : out)
    {
        o[0] = alloc(sizeof(float) * B * T * kD);
        o[1] = alloc(sizeof(float) * B * T);
        o[2] = alloc(sizeof(int32_t) * B * N);
        o[3] = alloc(sizeof(int32_t) * B * 2);
        o[4] = alloc(sizeof(int32_t));
        o[5] = alloc(sizeof(float) * B * T * kD);
        o[6] = alloc(sizeof(float) * B * T);
        o[7] = alloc(sizeof(int32_t) * B * N);
        o[8] = alloc(sizeof(int32_t) * B * 2);
        o[9] = alloc(sizeof(int32_t));
    }
    size_t const wsBytes = clapWs(B, kGh, kGw, 2, 2, P) + gbmWs(B, T, N, P);
    void* ws = alloc(wsBytes);
    cudaStream_t stream;
    cudaStreamCreate(&stream);

    Fields fc;
    fillClapDynamic(fc, P);
    Fields fg;
    fillGbmDynamic(fg, P);
    IPluginV3* clap = create(clapC, fc, TensorRTPhase::kRUNTIME);
    IPluginV3* gbm = create(gbmC, fg, TensorRTPhase::kRUNTIME);
    CHECK(clap != nullptr && gbm != nullptr);
    if (clap == nullptr || gbm == nullptr)
    {
        return;
    }
    auto* rc = static_cast<IPluginV3OneRuntime*>(clap->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    auto* rg = static_cast<IPluginV3OneRuntime*>(gbm->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    PluginTensorDesc cin[2] = {desc(dims({B, T, kD}), DataType::kFLOAT), desc(dims({B}), DataType::kFLOAT)};
    PluginTensorDesc cout[5] = {desc(dims({B, -1, kD}), DataType::kFLOAT), desc(dims({B, -1}), DataType::kFLOAT),
        desc(dims({B, N}), DataType::kINT32), desc(dims({B, 2}), DataType::kINT32), desc(dims({}), DataType::kINT32)};
    void const* cins[2] = {x, thr};
    CHECK(rc->onShapeChange(cin, 2, cout, 5) == 0);
    CHECK(rc->enqueue(cin, cout, cins, out[0], ws, stream) == 0);
    CHECK(clapFwd(x, thr, out[1][0], static_cast<float*>(out[1][1]), static_cast<int32_t*>(out[1][2]),
              static_cast<int32_t*>(out[1][3]), static_cast<int32_t*>(out[1][4]), B, kD, kGh, kGw, 2, 2, P, 0, ws,
              wsBytes, stream)
        == 0);
    CHECK(cudaStreamSynchronize(stream) == cudaSuccess);
    int32_t t1 = -1; // P + K1
    cudaMemcpy(&t1, out[0][4], sizeof(int32_t), cudaMemcpyDeviceToHost);
    CHECK(t1 >= P + N / 4 && t1 <= P + N);
    int const T1 = t1;
    CHECK(sameDevice(out[0][4], out[1][4], sizeof(int32_t)));
    CHECK(sameDevice(out[0][0], out[1][0], sizeof(float) * B * T1 * kD));
    CHECK(sameDevice(out[0][1], out[1][1], sizeof(float) * B * T1));
    CHECK(sameDevice(out[0][2], out[1][2], sizeof(int32_t) * B * N));
    CHECK(sameDevice(out[0][3], out[1][3], sizeof(int32_t) * B * 2));

    PluginTensorDesc gin[3] = {desc(dims({B, T1, kD}), DataType::kFLOAT), desc(dims({B, T1}), DataType::kFLOAT),
        desc(dims({B, N}), DataType::kINT32)};
    PluginTensorDesc gout[5] = {desc(dims({B, -1, kD}), DataType::kFLOAT), desc(dims({B, -1}), DataType::kFLOAT),
        desc(dims({B, N}), DataType::kINT32), desc(dims({B, 2}), DataType::kINT32), desc(dims({}), DataType::kINT32)};
    void const* gins[3] = {out[0][0], out[0][1], out[0][2]};
    CHECK(rg->onShapeChange(gin, 3, gout, 5) == 0);
    CHECK(rg->enqueue(gin, gout, gins, out[0] + 5, ws, stream) == 0);
    CHECK(gbmFwd(out[0][0], static_cast<float const*>(out[0][1]), static_cast<int32_t const*>(out[0][2]), out[1][5],
              static_cast<float*>(out[1][6]), static_cast<int32_t*>(out[1][7]), static_cast<int32_t*>(out[1][8]),
              static_cast<int32_t*>(out[1][9]), B, T1, N, kD, P, 5.0F, 0, ws, wsBytes, stream)
        == 0);
    CHECK(cudaStreamSynchronize(stream) == cudaSuccess);
    int32_t t2 = -1; // P + K2
    cudaMemcpy(&t2, out[0][9], sizeof(int32_t), cudaMemcpyDeviceToHost);
    CHECK(t2 >= P + 1 && t2 <= T1);
    int const T2 = t2;
    CHECK(sameDevice(out[0][9], out[1][9], sizeof(int32_t)));
    CHECK(sameDevice(out[0][5], out[1][5], sizeof(float) * B * T2 * kD));
    CHECK(sameDevice(out[0][6], out[1][6], sizeof(float) * B * T2));
    CHECK(sameDevice(out[0][7], out[1][7], sizeof(int32_t) * B * N));
    CHECK(sameDevice(out[0][8], out[1][8], sizeof(int32_t) * B * 2));
    delete clap;
    delete gbm;
    cudaStreamDestroy(stream);
    cudaFree(x);
    cudaFree(thr);
    for (void* q : bufs)
    {
        cudaFree(q);
    }
}

} // namespace

int main(int argc, char** argv)
{
    if (argc < 2)
    {
        std::fprintf(stderr, "usage: %s libalgm_plugins.so [--gpu]\n", argv[0]);
        return 2;
    }
    bool const gpu = argc > 2 && std::strcmp(argv[2], "--gpu") == 0;
    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr)
    {
        std::fprintf(stderr, "dlopen failed: %s\n", dlerror());
        return 2;
    }
    using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
    auto setLoggerFinder = reinterpret_cast<void (*)(ILoggerFinder*)>(dlsym(lib, "setLoggerFinder"));
    CHECK(getCreators != nullptr && setLoggerFinder != nullptr);
    CHECK(dlsym(lib, "getPluginCreators") == nullptr); // V3 only
    if (getCreators == nullptr)
    {
        return 2;
    }
    auto kernelsVersion = reinterpret_cast<int32_t (*)()>(dlsym(lib, "algmKernelsVersion"));
    auto maxPrefix = reinterpret_cast<int32_t (*)()>(dlsym(lib, "algmMaxPrefix"));
    CHECK(kernelsVersion != nullptr && kernelsVersion() == 3);
    CHECK(maxPrefix != nullptr && maxPrefix() >= 16); // DINOv2/v3 and EoMT: class token + 4 registers
    if (maxPrefix != nullptr)
    {
        gMaxPrefix = maxPrefix();
    }
    int32_t n = 0;
    IPluginCreatorInterface* const* creators = getCreators(n);
    testCreators(creators, n);
    IPluginCreatorV3One* clap = findCreator(creators, n, "AlgmClap");
    IPluginCreatorV3One* gbm = findCreator(creators, n, "AlgmGbm");
    IPluginCreatorV3One* clapDyn = findCreator(creators, n, "AlgmClap", "2");
    IPluginCreatorV3One* gbmDyn = findCreator(creators, n, "AlgmGbm", "2");
    if (clapDyn != nullptr && gbmDyn != nullptr)
    {
        testClapDynamic(clapDyn, reinterpret_cast<ClapDynWsFn>(dlsym(lib, "algmClapDynamicWorkspaceSize")));
        testGbmDynamic(gbmDyn, reinterpret_cast<GbmDynWsFn>(dlsym(lib, "algmGbmDynamicWorkspaceSize")));
    }
    if (clap != nullptr && gbm != nullptr)
    {
        testClap(clap, reinterpret_cast<ClapWsFn>(dlsym(lib, "algmClapWorkspaceSize")));
        testGbm(gbm, reinterpret_cast<GbmWsFn>(dlsym(lib, "algmGbmWorkspaceSize")));
        if (clapDyn != nullptr && gbmDyn != nullptr)
        {
            testPrefixCounts(clap, gbm, clapDyn, gbmDyn, lib);
        }
        int devices = 0;
        if (gpu)
        {
            if (cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0)
            {
                for (int P : {kP, 0, 5}) // the class token, none, class token + 4 registers
                {
                    testGpu(clap, gbm, lib, P);
                    if (clapDyn != nullptr && gbmDyn != nullptr)
                    {
                        testGpuDynamic(clapDyn, gbmDyn, lib, P);
                    }
                }
            }
            else
            {
                std::fprintf(stderr, "--gpu: no CUDA device, enqueue not tested\n");
                ++gFailures;
            }
        }
    }
    std::printf("%d checks, %d failed\n", gChecks, gFailures);
    return gFailures;
}
