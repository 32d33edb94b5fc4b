/*
 * run.h — one call of each entry point on a backend, with poisoned outputs,
 * workspace and stats, and the results brought back to the host.
 */
#ifndef DYNMOE_TESTS_RUN_H
#define DYNMOE_TESTS_RUN_H

#include "cases.h"
#include "test_util.h"

namespace dmtest {

/* A stats block on the backend, poisoned, attached to ctx for its lifetime. */
class StatsBlock {
  public:
    StatsBlock(dynmoe_ctx *ctx, dynmoe_backend b);
    ~StatsBlock();
    dynmoe_stats read() const;
    void poison();

  private:
    dynmoe_ctx *ctx_;
    Buffer buf_;
};

struct RouteOut {
    dynmoe_status status = DYNMOE_ERR_INTERNAL;
    std::vector<int32_t> ids;
    std::vector<float> weights;
    dynmoe_stats stats{};
};

/* dynmoe_route over in.logits/bias/mask (T tokens). */
RouteOut run_route(dynmoe_ctx *ctx, dynmoe_backend b, const dynmoe_router &r, int64_t T,
                   const RouteInputs &in, bool with_stats = true);

struct PlanOut {
    dynmoe_status status = DYNMOE_ERR_INTERNAL;
    dmref::Plan plan; /* downloaded: sorted_slots cut to R rows, active to num_active */
    int32_t num_active = -1;
    dynmoe_stats stats{};
    bool pointers_ok = false; /* every plan pointer lies inside the workspace */
};

PlanOut run_plan(dynmoe_ctx *ctx, dynmoe_backend b, const dynmoe_router &r, int64_t T, int32_t S,
                 const std::vector<int32_t> &ids, bool with_stats = true, bool poison = true);

struct ForwardOut {
    dynmoe_status status = DYNMOE_ERR_INTERNAL;
    std::vector<uint8_t> out_bytes;
    std::vector<double> out; /* decoded */
    dynmoe_stats stats{};
};

/* dynmoe_experts_forward of a table (weights as fp32). */
ForwardOut run_experts_forward(dynmoe_ctx *ctx, dynmoe_backend b, const dynmoe_router &r,
                               const ExpertWeights &w, dynmoe_dtype dt, int64_t T, const Packed &x,
                               const std::vector<int32_t> &ids, const std::vector<float> &weights,
                               int32_t S, bool with_stats = true, bool poison = true);

/* dynmoe_moe_forward; logits in in.logits.dtype. */
ForwardOut run_moe_forward(dynmoe_ctx *ctx, dynmoe_backend b, const dynmoe_router &r,
                           const ExpertWeights &w, dynmoe_dtype dt, int64_t T, const Packed &x,
                           const RouteInputs &in, bool with_stats = true);

dynmoe_experts make_experts_desc(const dynmoe_router &r, int32_t H, int32_t I, dynmoe_dtype dt,
                                 dynmoe_act act, const void *w13, const void *w2);

/* The experts of w (weights, biases) copied to backend b, and their description. */
struct BackendExperts {
    Buffer w13, w2, b13, b2, s13, s2, z13, z2; /* s, z: scales and zero points when quantized */
    dynmoe_experts desc;
};
BackendExperts upload_experts(dynmoe_backend b, const dynmoe_router &r, const ExpertWeights &w, dynmoe_dtype dt);

/* The router of a call with in.expert_scale on backend b (kept alive by `buf`). */
dynmoe_router with_expert_scale(const dynmoe_router &r, const RouteInputs &in, dynmoe_backend b, Buffer &buf);

std::vector<float> to_float(const std::vector<double> &v);

/* Hidden states x [T, H], uniform in [-1, 1], stored as dt. */
Packed random_x(int64_t T, int32_t H, dynmoe_dtype dt, Rng &rng);

/* The reference output and stats of moe_forward of case c on these inputs. */
std::vector<double> moe_reference_out(const ModelCase &c, const ExpertWeights &w, int64_t T, const Packed &x,
                                      const RouteInputs &in);
dynmoe_stats moe_reference_stats(const ModelCase &c, int64_t T, const RouteInputs &in);

/* No NaN/Inf (the poison) and ||got - ref|| / ||ref|| below the dtype's tolerance. */
void expect_close(const std::vector<double> &got, const std::vector<double> &ref, dynmoe_dtype dt,
                  const std::string &what);

/* moe_forward of case c on random inputs from `seed` against the reference:
 * output and the stats fields in `required`. */
void check_moe_vs_reference(dynmoe_ctx *ctx, dynmoe_backend b, const ModelCase &c, int64_t T, dynmoe_dtype dt,
                            uint64_t seed, unsigned required);

/* experts_forward of `table` (random experts and x from rng) against the
 * reference, which sees the fp32 slot weights the library gets. */
void check_experts_vs_reference(dynmoe_ctx *ctx, dynmoe_backend b, const dynmoe_router &r, int32_t H, int32_t I,
                                dynmoe_act act, dynmoe_dtype dt, const dmref::Table &table, Rng &rng,
                                unsigned required, const std::string &what, const ExpertOptions &opt = {});

} // namespace dmtest

#endif
