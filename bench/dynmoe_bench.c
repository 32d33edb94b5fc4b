/*
 * dynmoe-bench — times one MoE layer of a real model (a preset) through the
 * dynmoe C API and prints, per configuration, what a person compares: time per
 * layer, active TFLOP/s, GB/s on the weights actually read, the fraction of the
 * bound, and the speedup of dynamic routing over static top-K. Every
 * comparison is measured in the same process, on the same buffers:
 *
 *   layer     dynmoe_moe_forward: route -> plan -> experts -> combine
 *   static    the same layer with static top-K (no mask, no zero-expert share)
 *   dense     the two GEMMs of one FFN on M = routed rows, no gather/act/combine:
 *             [M,H]x[H,2I] then [M,I]x[I,H] — the same FLOPs as the active experts
 *   copy      memcpy / cudaMemcpy D2D bandwidth, the bound of decode
 *   route, plan, combine   each stage alone (combine: see measure_config)
 *
 * Napkin math for the default preset (Qwen3-30B-A3B, E 128, K 8, H 2048, I 768):
 * one expert is 3*I*H = 4.7 M weights (18.9 MB in f32); a layer is 2.4 GB f32.
 * Active FLOPs = 6*R*H*I with R = routed rows = T*K*keep*(1-zero share);
 * at T = 2048: R = 16384, 155 GFLOP — about 1.5 s on 2 AVX2 cores at
 * ~100 GFLOP/s, ~0.3 ms on an H100 at ~600 TFLOP/s.
 * --weights stores the same experts quantized (bench_quant.c): bytes per
 * weight 4 / 2 (f32 / bf16), 1.0002 (fp8_block), 0.53 (mxfp4: 1/2 + 1/32),
 * 0.52 (int4, group 128: 1/2 + 3/128). Decode reads each active expert's
 * bytes once, so its bound scales with these; prefill stays FLOP-bound.
 */
#define _GNU_SOURCE 1 /* popen, isatty, gmtime_r */

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench_commit.h" /* DYNMOE_BENCH_COMMIT, regenerated on every build */
#include "bench_dev.h"
#include "bench_quant.h"
#include "dynmoe.h"

#define MAX_LIST 64
#define MAX_ROT 16
#define MAX_WEIGHTS 8
#define W_NATIVE (-1) /* --weights native: the preset's own format */
/* The dense peak is measured at M = max(T*K, this): small-M GEMMs are
 * memory-bound and would understate the machine's FLOP rate. */
#define PEAK_MIN_ROWS 8192

/* ------------------------------------------------------------------------ */
/* presets: published configs of real models' MoE layers                   */
/* ------------------------------------------------------------------------ */

typedef struct preset {
    const char *name;  /* --preset */
    const char *model; /* as published */
    int32_t E, Z;
    dynmoe_zero_kind zero_kind;
    int32_t K, H, I;
    dynmoe_score score;
    int bias; /* selection bias (DeepSeek-V3 e_score_correction_bias, LongCat) */
    int32_t groups, topk_groups;
    dynmoe_norm norm;
    float scale;
    /* since issues 15/16 (zero = SwiGLU, blocked, no biases, weight on the output, plain) */
    dynmoe_act act;
    dynmoe_gate_up gate_up;
    int biases;          /* b13 [E, 2I], b2 [E, H] (gpt-oss) */
    int weight_on_input; /* Llama-4: the routing weight scales the expert's input */
    dynmoe_weight_format native; /* --weights native: the format the model ships */
} preset;

/* the presets of the 0.1 bench: SwiGLU, blocked gate/up, no biases, weight on the output, plain */
#define SWIGLU_PLAIN DYNMOE_ACT_SWIGLU, DYNMOE_GATE_UP_BLOCKED, 0, 0, DYNMOE_WEIGHTS_PLAIN
static const preset PRESETS[] = {
    {"mixtral-8x7b", "Mixtral-8x7B", 8, 0, DYNMOE_ZERO_OUTPUT, 2, 4096, 14336, DYNMOE_SCORE_SOFTMAX, 0, 0, 0,
     DYNMOE_NORM_SELECTED, 1.0f, SWIGLU_PLAIN},
    {"qwen3-30b-a3b", "Qwen3-30B-A3B", 128, 0, DYNMOE_ZERO_OUTPUT, 8, 2048, 768, DYNMOE_SCORE_SOFTMAX, 0, 0, 0,
     DYNMOE_NORM_SELECTED, 1.0f, SWIGLU_PLAIN},
    {"deepseek-v3", "DeepSeek-V3", 256, 0, DYNMOE_ZERO_OUTPUT, 8, 7168, 2048, DYNMOE_SCORE_SIGMOID, 1, 8, 4,
     DYNMOE_NORM_SELECTED, 2.5f, DYNMOE_ACT_SWIGLU, DYNMOE_GATE_UP_BLOCKED, 0, 0, DYNMOE_WEIGHTS_FP8_BLOCK},
    {"longcat-flash", "LongCat-Flash", 512, 256, DYNMOE_ZERO_IDENTITY, 12, 6144, 2048, DYNMOE_SCORE_SOFTMAX, 1, 0,
     0, DYNMOE_NORM_NONE, 6.0f, SWIGLU_PLAIN}, /* routed_scaling_factor 6.0 (HF config) */
    {"zeda-qwen3", "ZEDA-Qwen3", 128, 64, DYNMOE_ZERO_OUTPUT, 8, 2048, 768, DYNMOE_SCORE_SOFTMAX, 0, 0, 0,
     DYNMOE_NORM_SELECTED, 1.0f, SWIGLU_PLAIN},
    {"olmoe", "OLMoE-1B-7B", 64, 0, DYNMOE_ZERO_OUTPUT, 8, 2048, 1024, DYNMOE_SCORE_SOFTMAX, 0, 0, 0,
     DYNMOE_NORM_NONE, 1.0f, SWIGLU_PLAIN},
    /* gpt-oss: softmax over the top-4 logits = softmax over all, renormalised over the selected;
     * experts (clamp(up, +-7) + 1) * g * sigmoid(1.702 g), g = min(gate, 7), gate/up rows
     * interleaved, biases; the checkpoints ship MXFP4 experts */
    {"gpt-oss-20b", "gpt-oss-20b", 32, 0, DYNMOE_ZERO_OUTPUT, 4, 2880, 2880, DYNMOE_SCORE_SOFTMAX, 0, 0, 0,
     DYNMOE_NORM_SELECTED, 1.0f, DYNMOE_ACT_SWIGLU_OAI, DYNMOE_GATE_UP_INTERLEAVED, 1, 0, DYNMOE_WEIGHTS_MXFP4},
    {"gpt-oss-120b", "gpt-oss-120b", 128, 0, DYNMOE_ZERO_OUTPUT, 4, 2880, 2880, DYNMOE_SCORE_SOFTMAX, 0, 0, 0,
     DYNMOE_NORM_SELECTED, 1.0f, DYNMOE_ACT_SWIGLU_OAI, DYNMOE_GATE_UP_INTERLEAVED, 1, 0, DYNMOE_WEIGHTS_MXFP4},
    /* Llama-4 Scout: top-1 sigmoid score, the weight multiplies the expert's input (the shared
     * expert is a dense MLP outside the routed layer, not timed here) */
    {"llama4-scout", "Llama-4-Scout-17B-16E", 16, 0, DYNMOE_ZERO_OUTPUT, 1, 5120, 8192, DYNMOE_SCORE_SIGMOID, 0, 0,
     0, DYNMOE_NORM_NONE, 1.0f, DYNMOE_ACT_SWIGLU, DYNMOE_GATE_UP_BLOCKED, 0, 1, DYNMOE_WEIGHTS_PLAIN},
};
#define NUM_PRESETS ((int)(sizeof PRESETS / sizeof PRESETS[0]))
#define DEFAULT_PRESET 1 /* qwen3-30b-a3b */

static const char *score_name(dynmoe_score s) {
    return s == DYNMOE_SCORE_SOFTMAX ? "softmax" : s == DYNMOE_SCORE_SIGMOID ? "sigmoid" : "none";
}
static const char *norm_name(dynmoe_norm n) {
    return n == DYNMOE_NORM_NONE ? "none" : n == DYNMOE_NORM_SELECTED ? "selected" : n == DYNMOE_NORM_KEPT ? "kept" : "uniform";
}
static const char *select_name(dynmoe_select s) {
    return s == DYNMOE_SELECT_TOPK ? "topk" : s == DYNMOE_SELECT_TOP_P ? "top_p" : "threshold";
}
static const char *act_name(dynmoe_act a) {
    switch (a) {
    case DYNMOE_ACT_SWIGLU: return "swiglu";
    case DYNMOE_ACT_GEGLU: return "geglu";
    case DYNMOE_ACT_GEGLU_TANH: return "geglu_tanh";
    case DYNMOE_ACT_SWIGLU_OAI: return "swiglu_oai";
    case DYNMOE_ACT_RELU2: return "relu2";
    case DYNMOE_ACT_SILU: return "silu";
    default: return "?";
    }
}
static int act_gated(dynmoe_act a) { return a != DYNMOE_ACT_RELU2 && a != DYNMOE_ACT_SILU; }

/* ------------------------------------------------------------------------ */
/* options                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct opts {
    int preset;
    int backend; /* -1 auto */
    int64_t tokens[MAX_LIST];
    int ntokens;
    double keep[MAX_LIST];
    int nkeep;
    double zero[MAX_LIST];
    int nzero;
    int iters;  /* 0: auto */
    int warmup; /* -1: auto */
    int rounds; /* 0: auto */
    const char *json;
    int dtype;                          /* -1: auto */
    int32_t E, Z, K, H, I, G, GK;       /* -1: preset's */
    int zero_kind;                      /* -1: preset's */
    dynmoe_select select;
    float top_p, threshold;
    int profile;
    int rotate;
    uint64_t seed;
    int quiet;
    int weights[MAX_WEIGHTS]; /* dynmoe_weight_format, or W_NATIVE */
    int nweights;
    int32_t group; /* INT4 group size */
    int pack;      /* --pack: plain CPU experts pre-packed (dynmoe_experts_pack) */
} opts;

static void usage(FILE *f) {
    fprintf(f,
"usage: dynmoe-bench [options]\n"
"\n"
"Times one MoE layer (route -> plan -> experts -> combine, dynmoe_moe_forward) of a\n"
"real model and, in the same run, the ceilings it is compared with: a dense GEMM\n"
"with the same FLOPs, the memory copy bandwidth, and the same layer with static\n"
"top-K. One table row (and one JSON line) per configuration T x keep x zero share.\n"
"\n"
"layer\n"
"  --preset NAME       model MoE layer (default qwen3-30b-a3b); a unique prefix is enough:\n");
    for (int i = 0; i < NUM_PRESETS; i++) {
        const preset *p = &PRESETS[i];
        fprintf(f, "                        %-14s E %d", p->name, p->E);
        if (p->Z) fprintf(f, " + %d %s", p->Z, p->zero_kind == DYNMOE_ZERO_IDENTITY ? "identity" : "zero-output");
        fprintf(f, ", K %d, H %d, I %d, %s%s", p->K, p->H, p->I, score_name(p->score), p->bias ? " + bias" : "");
        if (p->groups) fprintf(f, ", %d groups keep %d", p->groups, p->topk_groups);
        if (p->scale != 1.0f) fprintf(f, ", scale %g", p->scale);
        fprintf(f, ", norm %s", norm_name(p->norm));
        if (p->act != DYNMOE_ACT_SWIGLU) fprintf(f, ", %s", act_name(p->act));
        if (p->gate_up == DYNMOE_GATE_UP_INTERLEAVED) fprintf(f, " interleaved");
        if (p->biases) fprintf(f, " + biases");
        if (p->weight_on_input) fprintf(f, ", weight on input");
        if (p->native != DYNMOE_WEIGHTS_PLAIN) fprintf(f, ", native %s", bq_format_name(p->native));
        fprintf(f, "\n");
    }
    fprintf(f,
"  --experts E         real experts (overrides the preset)\n"
"  --zero-experts Z    zero-computation experts, ids E..E+Z-1\n"
"  --zero-kind KIND    output (contributes 0) | identity (contributes w*x)\n"
"  --top-k K           slots per token\n"
"  --hidden H          model dimension\n"
"  --inter I           intermediate size of one expert (SwiGLU: W13 [2I,H], W2 [H,I])\n"
"  --groups G          DeepSeek-V3 group limit: G groups (0 = off)\n"
"  --topk-groups N     groups kept per token\n"
"  --router KIND       topk (default) | top_p | threshold\n"
"  --top-p P           for --router top_p (default 0.5)\n"
"  --threshold S       for --router threshold, on the score (default 0.05)\n"
"  --dtype T           f32 | bf16 | f16: weights, x and out (default: bf16 on CUDA;\n"
"                      on the CPU f32 when it fits in memory, else bf16). Logits are f32.\n"
"                      With quantized --weights this is the dtype of x, out and biases.\n"
"  --weights W[,W..]   how the expert weights are stored: plain (--dtype) | fp8_block (e4m3,\n"
"                      fp32 scale per 128x128) | mxfp4 (e2m1, ue8m0 scale per 32 along K) |\n"
"                      int4 (scale fp16 + zero point per --group-size along K) | native (the\n"
"                      preset's own: deepseek-v3 fp8_block, gpt-oss-* mxfp4, others plain).\n"
"                      Random weights are quantized by the bench's encoder. A list runs each\n"
"                      format on the same inputs, round-robin; xw = time / time(first W).\n"
"                      (default plain)\n"
"  --group-size G      int4 group along K: 32, 64 or 128 (default 128)\n"
"  --pack              CPU: pre-pack the plain weights once (dynmoe_experts_pack, oneDNN); they\n"
"                      run packed on the onednn CPU path (the default on AMX CPUs,\n"
"                      DYNMOE_CPU_ISA=onednn elsewhere); the header says what oneDNN runs\n"
"\n"
"sweep (a comma list runs every combination)\n"
"  --tokens T[,T..]    tokens per layer (default: 2048 on CUDA, 512 on the CPU)\n"
"  --keep F[,F..]      BEAM keep-rate: each real-expert slot survives its mask with\n"
"                      probability F, in (0,1]; 1 = no mask (default 1,0.5,0.15)\n"
"  --zero-share F[,F..] fraction of slots routed to zero experts, in [0,1); needs Z > 0\n"
"                      (default 0)\n"
"\n"
"timing\n"
"  --backend B         cpu | cuda (default: cuda when dynmoe_cuda_available(), else cpu)\n"
"  --iters N           timed calls per measurement (default: auto, enough for ~0.5 s on\n"
"                      the CPU / ~0.2 s on CUDA; at least 5 / 20)\n"
"  --warmup N          untimed calls before each measurement (default 1 CPU, 3 CUDA)\n"
"  --rounds N          measure the configurations of one T round-robin N times and pool\n"
"                      the samples, so that a slow spell of a shared machine hits every\n"
"                      row alike and the ratios between rows hold (default 3 on the CPU,\n"
"                      1 on CUDA; --iters and the auto time target are per round)\n"
"  --rotate N          input sets (x, logits, masks) rotated over the calls so caches do\n"
"                      not flatter small layers (default 4, at most %d)\n"
"  --seed S            seed of the random data (default 1)\n"
"\n"
"output\n"
"  --json FILE         append one JSON line per configuration (machine, commit, date,\n"
"                      every parameter and result); bench/plot.py draws them\n"
"  --quiet             no progress line on stderr\n"
"  --profile           one clean iteration of the first configuration (after warm-up),\n"
"                      between cudaProfilerStart/Stop and inside the NVTX range\n"
"                      \"dynmoe_profile\"; no ceilings, no table. For Nsight Compute:\n"
"                        ncu --profile-from-start off --set full -o layer dynmoe-bench --profile ...\n"
"                      Nsight Systems sees NVTX ranges on every timed call in normal runs:\n"
"                        nsys profile -t cuda,nvtx dynmoe-bench ...\n"
"  --help              this text\n"
"\n"
"columns: time = median [min, max] of the timed calls; us/tok = time / T;\n"
"GFLOP/s (TFLOP/s on CUDA) = 6*R*H*I / time with R = rows routed to real experts;\n"
"GB/s = weight bytes of the active experts (as stored: quantized values + scales + zero\n"
"points) / time; dense%% = dense GEMM time at the\n"
"same FLOPs (M = R rows) / time; roof%% = roofline bound / time, the bound being\n"
"max(FLOPs / peak dense GEMM rate, weight bytes / copy bandwidth), F or M says which;\n"
"xstat = time(static top-K) / time; t/t0 = time / time(static); work = R / R(static);\n"
"rpc = (route + plan + combine) / time, each stage timed alone; xw = time / time(first --weights)\n"
"at the same T, keep and zero share.\n"
"\n"
"example: dynmoe-bench --preset qwen3 --backend cpu --tokens 2048 --keep 1,0.5,0.15\n",
            MAX_ROT);
}

static int bad(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "dynmoe-bench: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n(dynmoe-bench --help lists every flag)\n");
    va_end(ap);
    return -1;
}

static int parse_int(const char *flag, const char *s, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return bad("%s: expected an integer in [%lld, %lld], got '%s'", flag, lo, hi, s);
    *out = v;
    return 0;
}

static int parse_real(const char *flag, const char *s, double lo, double hi, int lo_open, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v > hi || v < lo || (lo_open && v == lo))
        return bad("%s: expected a number in %s%g, %g], got '%s'", flag, lo_open ? "(" : "[", lo, hi, s);
    *out = v;
    return 0;
}

/* "a,b,c" -> values; each checked like a single value. */
static int parse_list(const char *flag, const char *s, int integer, double lo, double hi, int lo_open,
                      double *vals, int64_t *ivals, int *n) {
    char buf[1024];
    if (strlen(s) >= sizeof buf) return bad("%s: list too long", flag);
    strcpy(buf, s);
    *n = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (*n == MAX_LIST) return bad("%s: at most %d values", flag, MAX_LIST);
        if (integer) {
            long long v = 0;
            if (parse_int(flag, tok, (long long)lo, (long long)hi, &v)) return -1;
            ivals[(*n)++] = v;
        } else {
            double v = 0;
            if (parse_real(flag, tok, lo, hi, lo_open, &v)) return -1;
            vals[(*n)++] = v;
        }
    }
    if (*n == 0) return bad("%s: empty list", flag);
    return 0;
}

static int find_preset(const char *name) {
    int hit = -1, hits = 0;
    for (int i = 0; i < NUM_PRESETS; i++) {
        if (strcasecmp(name, PRESETS[i].name) == 0) return i;
        if (strncasecmp(name, PRESETS[i].name, strlen(name)) == 0) hit = i, hits++;
    }
    return hits == 1 ? hit : -1;
}

/* "plain,int4,..." -> o->weights; each name once. */
static int parse_weights(const char *s, opts *o) {
    char buf[256];
    if (strlen(s) >= sizeof buf) return bad("--weights: list too long");
    strcpy(buf, s);
    o->nweights = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        int w;
        if (!strcmp(tok, "plain")) w = DYNMOE_WEIGHTS_PLAIN;
        else if (!strcmp(tok, "fp8_block") || !strcmp(tok, "fp8")) w = DYNMOE_WEIGHTS_FP8_BLOCK;
        else if (!strcmp(tok, "mxfp4")) w = DYNMOE_WEIGHTS_MXFP4;
        else if (!strcmp(tok, "int4")) w = DYNMOE_WEIGHTS_INT4;
        else if (!strcmp(tok, "native")) w = W_NATIVE;
        else return bad("--weights: expected plain, fp8_block, mxfp4, int4 or native (a comma list), got '%s'", tok);
        if (o->nweights == MAX_WEIGHTS) return bad("--weights: at most %d formats", MAX_WEIGHTS);
        o->weights[o->nweights++] = w;
    }
    if (o->nweights == 0) return bad("--weights: empty list");
    return 0;
}

static int parse_args(int argc, char **argv, opts *o) {
    *o = (opts){.preset = DEFAULT_PRESET, .backend = -1, .iters = 0, .warmup = -1, .dtype = -1,
                .E = -1, .Z = -1, .K = -1, .H = -1, .I = -1, .G = -1, .GK = -1, .zero_kind = -1,
                .select = DYNMOE_SELECT_TOPK, .top_p = 0.5f, .threshold = 0.05f, .rotate = 4, .seed = 1,
                .group = 128};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        char flag[64];
        const char *val = NULL;
        if (strncmp(a, "--", 2) != 0) return bad("unexpected argument '%s'", a);
        const char *eq = strchr(a, '=');
        size_t fl = eq ? (size_t)(eq - a) : strlen(a);
        if (fl >= sizeof flag) return bad("unknown flag '%s'", a);
        memcpy(flag, a, fl);
        flag[fl] = 0;
        static const char *known[] = {"--help", "--profile", "--quiet", "--pack", "--preset", "--backend", "--tokens",
                                      "--keep", "--zero-share", "--iters", "--warmup", "--rounds", "--rotate", "--seed",
                                      "--json", "--dtype", "--experts", "--zero-experts", "--zero-kind", "--top-k",
                                      "--hidden", "--inter", "--groups", "--topk-groups", "--router", "--top-p",
                                      "--threshold", "--weights", "--group-size"};
        int is_known = 0;
        for (size_t k = 0; k < sizeof known / sizeof known[0]; k++) is_known |= !strcmp(flag, known[k]);
        if (!is_known) return bad("unknown flag '%s'", flag);
        /* flags without a value */
        if (!strcmp(flag, "--help")) {
            usage(stdout);
            exit(0);
        }
        if (!strcmp(flag, "--profile") || !strcmp(flag, "--quiet") || !strcmp(flag, "--pack")) {
            if (eq) return bad("%s takes no value", flag);
            if (!strcmp(flag, "--profile")) o->profile = 1;
            else if (!strcmp(flag, "--pack")) o->pack = 1;
            else o->quiet = 1;
            continue;
        }
        if (eq) val = eq + 1;
        else if (i + 1 < argc) val = argv[++i];
        else return bad("%s needs a value", flag);
        long long v;
        double d;
        if (!strcmp(flag, "--preset")) {
            o->preset = find_preset(val);
            if (o->preset < 0) {
                fprintf(stderr, "dynmoe-bench: unknown preset '%s'; presets:", val);
                for (int p = 0; p < NUM_PRESETS; p++) fprintf(stderr, " %s", PRESETS[p].name);
                fprintf(stderr, "\n");
                return -1;
            }
        } else if (!strcmp(flag, "--backend")) {
            if (!strcmp(val, "cpu")) o->backend = DYNMOE_BACKEND_CPU;
            else if (!strcmp(val, "cuda")) o->backend = DYNMOE_BACKEND_CUDA;
            else return bad("--backend: expected cpu or cuda, got '%s'", val);
        } else if (!strcmp(flag, "--tokens")) {
            if (parse_list(flag, val, 1, 1, DYNMOE_MAX_TOKENS, 0, NULL, o->tokens, &o->ntokens)) return -1;
        } else if (!strcmp(flag, "--keep")) {
            if (parse_list(flag, val, 0, 0, 1, 1, o->keep, NULL, &o->nkeep)) return -1;
        } else if (!strcmp(flag, "--zero-share")) {
            if (parse_list(flag, val, 0, 0, 0.999, 0, o->zero, NULL, &o->nzero)) return -1;
        } else if (!strcmp(flag, "--iters")) {
            if (parse_int(flag, val, 1, 1000000, &v)) return -1;
            o->iters = (int)v;
        } else if (!strcmp(flag, "--warmup")) {
            if (parse_int(flag, val, 0, 1000000, &v)) return -1;
            o->warmup = (int)v;
        } else if (!strcmp(flag, "--rounds")) {
            if (parse_int(flag, val, 1, 100, &v)) return -1;
            o->rounds = (int)v;
        } else if (!strcmp(flag, "--rotate")) {
            if (parse_int(flag, val, 1, MAX_ROT, &v)) return -1;
            o->rotate = (int)v;
        } else if (!strcmp(flag, "--seed")) {
            if (parse_int(flag, val, 0, (long long)1 << 62, &v)) return -1;
            o->seed = (uint64_t)v;
        } else if (!strcmp(flag, "--json")) {
            o->json = val;
        } else if (!strcmp(flag, "--dtype")) {
            if (!strcmp(val, "f32")) o->dtype = DYNMOE_F32;
            else if (!strcmp(val, "bf16")) o->dtype = DYNMOE_BF16;
            else if (!strcmp(val, "f16")) o->dtype = DYNMOE_F16;
            else return bad("--dtype: expected f32, bf16 or f16, got '%s'", val);
        } else if (!strcmp(flag, "--experts")) {
            if (parse_int(flag, val, 1, DYNMOE_MAX_EXPERTS, &v)) return -1;
            o->E = (int32_t)v;
        } else if (!strcmp(flag, "--zero-experts")) {
            if (parse_int(flag, val, 0, DYNMOE_MAX_EXPERTS, &v)) return -1;
            o->Z = (int32_t)v;
        } else if (!strcmp(flag, "--zero-kind")) {
            if (!strcmp(val, "output") || !strcmp(val, "zero")) o->zero_kind = DYNMOE_ZERO_OUTPUT;
            else if (!strcmp(val, "identity")) o->zero_kind = DYNMOE_ZERO_IDENTITY;
            else return bad("--zero-kind: expected output or identity, got '%s'", val);
        } else if (!strcmp(flag, "--top-k")) {
            if (parse_int(flag, val, 1, DYNMOE_MAX_TOP_K, &v)) return -1;
            o->K = (int32_t)v;
        } else if (!strcmp(flag, "--hidden")) {
            if (parse_int(flag, val, 1, 1 << 20, &v)) return -1;
            o->H = (int32_t)v;
        } else if (!strcmp(flag, "--inter")) {
            if (parse_int(flag, val, 1, 1 << 20, &v)) return -1;
            o->I = (int32_t)v;
        } else if (!strcmp(flag, "--groups")) {
            if (parse_int(flag, val, 0, DYNMOE_MAX_EXPERTS, &v)) return -1;
            o->G = (int32_t)v;
        } else if (!strcmp(flag, "--topk-groups")) {
            if (parse_int(flag, val, 1, DYNMOE_MAX_EXPERTS, &v)) return -1;
            o->GK = (int32_t)v;
        } else if (!strcmp(flag, "--router")) {
            if (!strcmp(val, "topk")) o->select = DYNMOE_SELECT_TOPK;
            else if (!strcmp(val, "top_p") || !strcmp(val, "top-p")) o->select = DYNMOE_SELECT_TOP_P;
            else if (!strcmp(val, "threshold")) o->select = DYNMOE_SELECT_THRESHOLD;
            else return bad("--router: expected topk, top_p or threshold, got '%s'", val);
        } else if (!strcmp(flag, "--top-p")) {
            if (parse_real(flag, val, 0, 1, 1, &d)) return -1;
            o->top_p = (float)d;
        } else if (!strcmp(flag, "--weights")) {
            if (parse_weights(val, o)) return -1;
        } else if (!strcmp(flag, "--group-size")) {
            if (parse_int(flag, val, 32, 128, &v)) return -1;
            if (v != 32 && v != 64 && v != 128) return bad("--group-size: expected 32, 64 or 128, got '%s'", val);
            o->group = (int32_t)v;
        } else if (!strcmp(flag, "--threshold")) {
            if (parse_real(flag, val, -1e30, 1e30, 0, &d)) return -1;
            o->threshold = (float)d;
        } else {
            return bad("unknown flag '%s'", flag);
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* random inputs                                                            */
/* ------------------------------------------------------------------------ */

typedef struct rng {
    uint64_t s;
} rng;
static uint64_t rng_next(rng *r) { /* splitmix64 */
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static double rng_u01(rng *r) { return (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0); }
static int64_t rng_below(rng *r, int64_t n) { return (int64_t)(rng_u01(r) * (double)n); }

/* Router logits [T, E+Z] (f32) that make a top-K router pick exactly the
 * experts we draw: K "hot" logits in [3, 4), the rest "cold" in [-3, 0).
 * Per token, round(zero_share*K) slots (stochastically rounded, so the mean is
 * exact) go to distinct random zero experts, the others to distinct random real
 * experts, uniform over experts (balanced load, as a trained router with its
 * load-balancing loss). With a group limit the real experts are drawn inside
 * topk_groups random groups, so the group stage keeps them. The gap (>= 3)
 * is far larger than the selection bias (|b| <= 0.05), so bias never changes
 * the choice. Top-p and threshold routers see the same logits and cut some. */
static void make_logits(float *logits, int64_t T, const dynmoe_router *r, double zero_share, rng *g,
                        int32_t *perm /* [E+Z] scratch */) {
    int32_t E = r->num_experts, Z = r->num_zero_experts, N = E + Z, K = r->top_k;
    for (int64_t t = 0; t < T; t++) {
        float *row = logits + t * N;
        for (int32_t e = 0; e < N; e++) row[e] = (float)(-3.0 + 3.0 * rng_u01(g)) - 1e-3f;
        double want = zero_share * K;
        int32_t nz = (int32_t)floor(want) + (rng_u01(g) < want - floor(want) ? 1 : 0);
        if (nz > Z) nz = Z;
        if (nz > K) nz = K;
        int32_t nr = K - nz;
        /* real candidates */
        int32_t pool = 0;
        if (r->num_groups > 0) {
            int32_t G = r->num_groups, per = E / G;
            int32_t gperm[DYNMOE_MAX_EXPERTS];
            for (int32_t j = 0; j < G; j++) gperm[j] = j;
            for (int32_t j = 0; j < r->topk_groups; j++) {
                int32_t k = j + (int32_t)rng_below(g, G - j), tmp = gperm[j];
                gperm[j] = gperm[k], gperm[k] = tmp;
                for (int32_t e = 0; e < per; e++) perm[pool++] = gperm[j] * per + e;
            }
        } else {
            for (int32_t e = 0; e < E; e++) perm[pool++] = e;
        }
        if (nr > pool) nr = pool;
        for (int32_t j = 0; j < nr; j++) { /* partial Fisher-Yates */
            int32_t k = j + (int32_t)rng_below(g, pool - j), tmp = perm[j];
            perm[j] = perm[k], perm[k] = tmp;
            row[perm[j]] = (float)(3.0 + rng_u01(g));
        }
        for (int32_t j = 0; j < Z; j++) perm[j] = E + j;
        for (int32_t j = 0; j < nz; j++) {
            int32_t k = j + (int32_t)rng_below(g, Z - j), tmp = perm[j];
            perm[j] = perm[k], perm[k] = tmp;
            row[perm[j]] = (float)(3.0 + rng_u01(g));
        }
    }
}

/* BEAM mask logits [T, E]: > 0 (kept) with probability keep, never 0. */
static void make_mask(float *mask, int64_t T, int32_t E, double keep, rng *g) {
    for (int64_t i = 0; i < T * E; i++) {
        float m = (float)(0.5 + rng_u01(g));
        mask[i] = rng_u01(g) < keep ? m : -m;
    }
}

/* ------------------------------------------------------------------------ */
/* the bench state and the timed calls                                      */
/* ------------------------------------------------------------------------ */

enum { RUN_LAYER, RUN_ROUTE, RUN_PLAN, RUN_COMBINE, RUN_DENSE, RUN_COPY };

typedef struct bench {
    opts o;
    bdev dev;
    dynmoe_ctx *ctx;
    dynmoe_router router;    /* the layer's */
    dynmoe_router router_id; /* same, zero experts made identity: the combine proxy */
    dynmoe_experts ex;
    const char *model;
    int modified; /* a preset with overrides: marked '*' in the table */
    int64_t Tmax;
    int nrot;
    /* --weights: one experts struct per format, on the same random weights
     * (quantized by bench_quant.c); ex is the one being timed */
    int nw;
    dynmoe_weight_format wfmt[MAX_WEIGHTS];
    dynmoe_experts exw[MAX_WEIGHTS];
    void *wmem[MAX_WEIGHTS][6]; /* w13, w2, w13_scale, w2_scale, w13_zero, w2_zero */
    dynmoe_packed_experts *packed[MAX_WEIGHTS]; /* --pack: of each plain format, or NULL */
    double expert_bytes[MAX_WEIGHTS]; /* one expert's w13 + w2 as stored, scales and zeros included */
    void *b13, *b2;
    void *out, *ws;
    size_t ws_bytes;
    float *bias;
    void *x[MAX_ROT], *logits[MAX_ROT], *mask[MAX_ROT];
    int32_t *ids[MAX_ROT], *ids_id[MAX_ROT];
    float *wts[MAX_ROT];
    /* host staging */
    float *h_logits, *h_mask;
    int32_t *h_ids, *perm;
    /* the call being timed */
    int kind;
    int64_t T;
    int use_mask;
    int64_t dense_rows;
    dynmoe_status last_status;
    char last_msg[512];
    uint64_t calls; /* timed or warm-up calls so far: picks the rotated input set */
} bench;

static int check(bench *b, dynmoe_status st, const char *what) {
    if (st == DYNMOE_OK) return 0;
    b->last_status = st;
    snprintf(b->last_msg, sizeof b->last_msg, "%s: %s: %s", what, dynmoe_status_name(st), dynmoe_last_error());
    return -1;
}

static int run_once(void *arg, int iter) {
    bench *b = arg;
    (void)iter;
    int j = (int)(b->calls++ % (uint64_t)b->nrot); /* consecutive calls never reuse a set */
    void *s = b->dev.stream;
    dynmoe_status st = DYNMOE_OK;
    int rc;
    switch (b->kind) {
    case RUN_LAYER:
        bdev_range_push("dynmoe_moe_forward");
        st = dynmoe_moe_forward(b->ctx, &b->router, &b->ex, b->T, b->x[j], b->logits[j], DYNMOE_F32, b->bias,
                                b->use_mask ? b->mask[j] : NULL, b->out, b->ws, b->ws_bytes, s);
        bdev_range_pop();
        return check(b, st, "dynmoe_moe_forward");
    case RUN_ROUTE:
        bdev_range_push("dynmoe_route");
        st = dynmoe_route(b->ctx, &b->router, b->T, b->logits[j], DYNMOE_F32, b->bias,
                          b->use_mask ? b->mask[j] : NULL, b->ids[j], b->wts[j], s);
        bdev_range_pop();
        return check(b, st, "dynmoe_route");
    case RUN_PLAN: {
        dynmoe_plan plan;
        bdev_range_push("dynmoe_plan_build");
        st = dynmoe_plan_build(b->ctx, &b->router, b->T, b->ids[j], b->router.top_k, b->ws, b->ws_bytes, &plan, s);
        bdev_range_pop();
        return check(b, st, "dynmoe_plan_build");
    }
    case RUN_COMBINE:
        bdev_range_push("combine (experts_forward, identity table)");
        st = dynmoe_experts_forward(b->ctx, &b->router_id, &b->ex, b->T, b->x[j], b->ids_id[j], b->wts[j],
                                    b->router.top_k, b->out, b->ws, b->ws_bytes, s);
        bdev_range_pop();
        return check(b, st, "dynmoe_experts_forward (combine proxy)");
    case RUN_DENSE:
        bdev_range_push("dense GEMM ceiling");
        rc = bdev_dense_run(&b->dev, b->dense_rows);
        bdev_range_pop();
        break;
    case RUN_COPY:
        bdev_range_push("copy bandwidth");
        rc = bdev_copy_run(&b->dev);
        bdev_range_pop();
        break;
    default:
        return -1;
    }
    if (rc != 0) {
        b->last_status = DYNMOE_ERR_DEVICE;
        snprintf(b->last_msg, sizeof b->last_msg, "%s", bdev_last_error());
    }
    return rc;
}

typedef struct tstat {
    double med, min, max, p10, p90, mean;
    int iters;
} tstat;

/* Every timed call of one measurement, over all rounds. */
typedef struct samples {
    double *v;
    int n;
} samples;

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* p-quantile of sorted s[n], linear interpolation. */
static double quantile(const double *s, int n, double p) {
    double pos = p * (n - 1);
    int lo = (int)floor(pos), hi = lo + 1 < n ? lo + 1 : n - 1;
    return s[lo] + (s[hi] - s[lo]) * (pos - lo);
}

/* Warm-up, then `--iters` timed calls, or (auto) as many as fill the time
 * target given the first timed call: big layers get few, small ones many.
 * The calls join `acc` (earlier rounds) and *ts is over all of them; a
 * measurement made in `rounds` rounds takes 1/rounds of the calls each time. */
static int measure(bench *b, int kind, int rounds, samples *acc, tstat *ts) {
    int cuda = b->dev.cuda;
    int warmup = b->o.warmup >= 0 ? b->o.warmup : (cuda ? 3 : 1);
    double target = (cuda ? 0.2 : 0.5) / rounds;
    int lo = ((cuda ? 20 : 5) + rounds - 1) / rounds, hi = cuda ? 5000 : 200;
    b->kind = kind;
    double first;
    if (bdev_time(&b->dev, run_once, b, warmup, 1, &first) != 0) return -1;
    int n = b->o.iters;
    if (n == 0) {
        double want = first > 0 ? target / first : hi;
        n = want < lo ? lo : want > hi ? hi : (int)want;
    }
    double *v = realloc(acc->v, sizeof(double) * (size_t)(acc->n + n));
    if (!v) return -1;
    acc->v = v;
    double *s = v + acc->n;
    s[0] = first; /* the first timed call, after warm-up, is a sample too */
    if (n > 1 && bdev_time(&b->dev, run_once, b, 0, n - 1, s + 1) != 0) return -1;
    acc->n += n;
    double *all = malloc(sizeof(double) * (size_t)acc->n);
    if (!all) return -1;
    memcpy(all, acc->v, sizeof(double) * (size_t)acc->n);
    n = acc->n;
    qsort(all, (size_t)n, sizeof(double), cmp_double);
    double sum = 0;
    for (int i = 0; i < n; i++) sum += all[i];
    *ts = (tstat){quantile(all, n, 0.5), all[0], all[n - 1], quantile(all, n, 0.1), quantile(all, n, 0.9), sum / n, n};
    free(all);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* setup                                                                    */
/* ------------------------------------------------------------------------ */

typedef struct sizes {
    size_t weights, per_set, out, ws, dense, copy, total;
} sizes;

/* The layer's experts stored as f, without pointers (b->ex holds the shape,
 * activation and bias pointers). */
static dynmoe_experts experts_for(const bench *b, dynmoe_weight_format f, dynmoe_dtype dt) {
    dynmoe_experts ex = b->ex;
    ex.dtype = dt;
    ex.weight_format = f;
    ex.group_size = f == DYNMOE_WEIGHTS_FP8_BLOCK ? 128 : f == DYNMOE_WEIGHTS_MXFP4 ? 32
                    : f == DYNMOE_WEIGHTS_INT4    ? b->o.group
                                                  : 0;
    return ex;
}

/* One expert's w13 [N13, H] + w2 [H, I] as stored: what decode reads per active expert. */
static double expert_bytes_of(const dynmoe_experts *ex, int32_t group) {
    int64_t H = ex->hidden, I = ex->inter, N13 = act_gated(ex->act) ? 2 * I : I;
    bq_bytes a = bq_matrix_bytes(ex->weight_format, ex->dtype, N13, H, group, 1);
    bq_bytes c = bq_matrix_bytes(ex->weight_format, ex->dtype, H, I, group, 1);
    return (double)(a.q + a.scale + a.zero + c.q + c.scale + c.zero);
}

static sizes size_of(const bench *b, dynmoe_dtype dt, size_t copy_bytes) {
    const dynmoe_router *r = &b->router;
    size_t es = dtype_size(dt), T = (size_t)b->Tmax, E = (size_t)r->num_experts, N = E + (size_t)r->num_zero_experts;
    size_t K = (size_t)r->top_k, H = (size_t)b->ex.hidden, I = (size_t)b->ex.inter, M = T * K;
    if (M < PEAK_MIN_ROWS) M = PEAK_MIN_ROWS;
    sizes z;
    z.weights = 0;
    z.ws = 0;
    for (int w = 0; w < b->nw; w++) {
        dynmoe_experts ex = experts_for(b, b->wfmt[w], dt);
        z.weights += E * (size_t)expert_bytes_of(&ex, b->o.group);
        size_t w1 = dynmoe_workspace_size(&b->router, &ex, b->Tmax), w2 = dynmoe_workspace_size(&b->router_id, &ex, b->Tmax);
        if (w1 == 0 || w2 == 0) {
            z.ws = 0; /* the library rejects this layer: setup reports it */
            break;
        }
        if (w1 > z.ws) z.ws = w1;
        if (w2 > z.ws) z.ws = w2;
    }
    if (PRESETS[b->o.preset].biases) z.weights += E * (act_gated(b->ex.act) ? 2 : 1) * I * es + E * H * es; /* biases */
    z.per_set = T * H * es + T * N * 4 + T * E * 4 + T * K * 12;
    z.out = T * H * es;
    size_t des = b->dev.cuda ? es : 4;
    z.dense = b->dev.has_dense ? (M * H + 2 * I * H + M * 2 * I + M * I + H * I + M * H) * des : 0;
    z.copy = 2 * copy_bytes;
    z.total = z.weights + (size_t)b->nrot * z.per_set + z.out + z.ws + z.dense + z.copy;
    if (!b->dev.cuda) z.total += T * N * 4 + T * E * 4 + T * K * 4 + N * 4; /* host staging */
    return z;
}

static double gb(size_t bytes) { return (double)bytes / 1e9; }

static int alloc_fill(bench *b, void **p, size_t n, dynmoe_dtype t, float a, uint64_t seed) {
    *p = bdev_alloc(&b->dev, n * dtype_size(t));
    if (!*p) return bad("allocation failed: %s", bdev_last_error());
    /* a random block of 1M + 3 elements (odd, so tiles do not line up with
     * rows or experts) tiled over the buffer with shifted starts */
    size_t bn = ((size_t)1 << 20) + 3;
    if (bn > n) bn = n;
    float *f = malloc(bn * 4);
    void *blk = malloc(bn * 4);
    if (!f || !blk) {
        free(f);
        free(blk);
        return bad("out of host memory");
    }
    random_floats(f, bn, a, seed);
    convert_from_f32(f, blk, bn, t);
    int rc = bdev_fill(&b->dev, *p, n * dtype_size(t), blk, bn * dtype_size(t));
    free(f);
    free(blk);
    return rc ? bad("filling a buffer failed: %s", bdev_last_error()) : 0;
}

/* E experts' [N, K] matrix in format f: random values in +-a encoded by
 * bench_quant.c on the host (in place on the CPU, staged and uploaded on
 * CUDA); scale and zero buffers of their own (INT4 with zero points). */
static int alloc_quant(bench *b, dynmoe_weight_format f, int32_t E, int64_t N, int64_t K, float a, uint64_t seed,
                       void **q, void **scale, void **zero) {
    bq_bytes by = bq_matrix_bytes(f, b->ex.dtype, N, K, b->o.group, 1);
    size_t nq = by.q * (size_t)E, ns = by.scale * (size_t)E, nz = by.zero * (size_t)E;
    *q = bdev_alloc(&b->dev, nq);
    *scale = bdev_alloc(&b->dev, ns);
    *zero = nz ? bdev_alloc(&b->dev, nz) : NULL;
    if (!*q || !*scale || (nz && !*zero)) return bad("allocation failed: %s", bdev_last_error());
    uint8_t *hq = *q, *hz = *zero;
    void *hs = *scale;
    if (b->dev.cuda) {
        hq = malloc(nq), hs = malloc(ns), hz = nz ? malloc(nz) : NULL;
        if (!hq || !hs || (nz && !hz)) {
            free(hq), free(hs), free(hz);
            return bad("out of host memory staging %s weights", bq_format_name(f));
        }
    }
    bq_encode(f, E, N, K, b->o.group, a, seed, hq, hs, hz);
    int rc = 0;
    if (b->dev.cuda) {
        rc = bdev_upload(&b->dev, *q, hq, nq) || bdev_upload(&b->dev, *scale, hs, ns) ||
             (nz && bdev_upload(&b->dev, *zero, hz, nz));
        free(hq), free(hs), free(hz);
    }
    return rc ? bad("uploading %s weights failed: %s", bq_format_name(f), bdev_last_error()) : 0;
}

/* ------------------------------------------------------------------------ */
/* one configuration                                                        */
/* ------------------------------------------------------------------------ */

typedef struct result {
    int64_t T;
    double keep, zero;
    int ok;
    char error[512];
    tstat layer, route, plan, combine, dense;
    samples s_layer, s_route, s_plan, s_combine, s_dense; /* pooled over rounds */
    double rows, active; /* means over the rotated sets */
    double flops, weight_bytes, mem_s, flop_s, bound_s, frac;
    char bound_kind;
    double static_s, static_rows, speedup, ratio, work, rpc_share;
    int w;             /* index into --weights */
    double over_first; /* time / time of the first --weights format, same T, keep, zero share (0: n/a) */
} result;

/* Untimed preparation of one configuration: fresh logits and masks for every
 * rotated set, the routing tables they give (for the plan and combine timings)
 * and the routed rows / active experts each set really produced. */
static int prepare(bench *b, result *res) {
    const dynmoe_router *r = &b->router;
    int32_t E = r->num_experts, N = E + r->num_zero_experts, K = r->top_k;
    int64_t T = res->T;
    b->T = T;
    b->use_mask = res->keep < 1.0;
    res->rows = res->active = 0;
    for (int j = 0; j < b->nrot; j++) {
        rng g = {b->o.seed * 1000003u + (uint64_t)T * 7919u + (uint64_t)(res->keep * 1e6) * 31u +
                 (uint64_t)(res->zero * 1e6) * 131u + (uint64_t)j};
        make_logits(b->h_logits, T, r, res->zero, &g, b->perm);
        if (bdev_upload(&b->dev, b->logits[j], b->h_logits, (size_t)T * N * 4)) goto dev_fail;
        if (b->use_mask) {
            make_mask(b->h_mask, T, E, res->keep, &g);
            if (bdev_upload(&b->dev, b->mask[j], b->h_mask, (size_t)T * E * 4)) goto dev_fail;
        }
        if (check(b, dynmoe_route(b->ctx, r, T, b->logits[j], DYNMOE_F32, b->bias, b->use_mask ? b->mask[j] : NULL,
                                  b->ids[j], b->wts[j], b->dev.stream), "dynmoe_route"))
            return -1;
        dynmoe_plan plan;
        if (check(b, dynmoe_plan_build(b->ctx, r, T, b->ids[j], K, b->ws, b->ws_bytes, &plan, b->dev.stream),
                  "dynmoe_plan_build"))
            return -1;
        int32_t rows = 0, active = 0;
        if (bdev_download(&b->dev, &rows, plan.expert_offsets + E, 4) ||
            bdev_download(&b->dev, &active, plan.num_active, 4))
            goto dev_fail;
        res->rows += rows;
        res->active += active;
        /* Combine proxy table: every real-expert slot becomes an identity zero
         * expert (id E), zero-output slots become empty, identity slots stay.
         * experts_forward then runs plan (no rows) + combine over the same slots
         * reading x[t] instead of y[row]: the combine's cost with no GEMM. */
        if (bdev_download(&b->dev, b->h_ids, b->ids[j], (size_t)T * K * 4)) goto dev_fail;
        for (int64_t i = 0; i < T * K; i++) {
            int32_t id = b->h_ids[i];
            if (id >= 0 && id < E) b->h_ids[i] = E;
            else if (id >= E && r->zero_kind != DYNMOE_ZERO_IDENTITY) b->h_ids[i] = -1;
        }
        if (bdev_upload(&b->dev, b->ids_id[j], b->h_ids, (size_t)T * K * 4)) goto dev_fail;
    }
    res->rows /= b->nrot;
    res->active /= b->nrot;
    return 0;
dev_fail:
    b->last_status = DYNMOE_ERR_DEVICE;
    snprintf(b->last_msg, sizeof b->last_msg, "%s", bdev_last_error());
    return -1;
}

static void progress(bench *b, const result *res, int at, int total, const char *what) {
    if (b->o.quiet) return;
    int tty = isatty(2);
    if (!tty && strcmp(what, "prepare") != 0) return; /* a log gets one line per configuration */
    fprintf(stderr, "%s[%d/%d] T=%lld keep=%.2f zero=%.2f: %-8s%s", tty ? "\r\033[K" : "", at, total,
            (long long)res->T, res->keep, res->zero, what, tty ? "" : "\n");
    fflush(stderr);
}

/* Measures everything of one configuration. `full` = 0 for a static baseline
 * that is not itself a requested row: only the layer time and rows. */
static int measure_config(bench *b, result *res, double copy_bw, double peak_flops, int at, int total, int full) {
    const dynmoe_experts *ex = &b->ex;
    res->ok = 0;
    progress(b, res, at, total, "prepare");
    if (prepare(b, res)) goto fail;
    progress(b, res, at, total, "layer");
    if (measure(b, RUN_LAYER, b->o.rounds, &res->s_layer, &res->layer)) goto fail;
    if (!full) {
        res->ok = 1;
        return 0;
    }
    progress(b, res, at, total, "route");
    if (measure(b, RUN_ROUTE, b->o.rounds, &res->s_route, &res->route)) goto fail;
    progress(b, res, at, total, "plan");
    if (measure(b, RUN_PLAN, b->o.rounds, &res->s_plan, &res->plan)) goto fail;
    progress(b, res, at, total, "combine");
    if (measure(b, RUN_COMBINE, b->o.rounds, &res->s_combine, &res->combine)) goto fail;
    b->dense_rows = (int64_t)llround(res->rows);
    if (b->dense_rows > 0 && b->dev.has_dense) {
        progress(b, res, at, total, "dense");
        if (measure(b, RUN_DENSE, b->o.rounds, &res->s_dense, &res->dense)) goto fail;
    }
    double H = ex->hidden, I = ex->inter, N13 = act_gated(ex->act) ? 2 * I : I;
    res->flops = 2.0 * res->rows * H * (N13 + I); /* [R,H]x[H,N13] + [R,I]x[I,H], 2 FLOPs per MAC */
    res->weight_bytes = res->active * expert_bytes_of(ex, b->o.group); /* as stored: quantized bytes */
    /* Roofline: the layer can go no faster than its FLOPs at the best dense
     * GEMM rate of this run, nor than its weight bytes at copy bandwidth. (The
     * dense GEMM at equal FLOPs is the comparison, not the bound: at small M
     * it is itself memory-bound and can be beaten.) */
    double mem_s = copy_bw > 0 ? res->weight_bytes / copy_bw : 0;
    double flop_s = peak_flops > 0 ? res->flops / peak_flops : 0;
    res->mem_s = mem_s;
    res->flop_s = flop_s;
    res->bound_kind = flop_s >= mem_s ? 'F' : 'M';
    res->bound_s = flop_s >= mem_s ? flop_s : mem_s;
    res->frac = res->bound_s / res->layer.med;
    res->rpc_share = (res->route.med + res->plan.med + res->combine.med) / res->layer.med;
    res->ok = 1;
    return 0;
fail:
    snprintf(res->error, sizeof res->error, "%s", b->last_msg);
    return -1;
}

/* ------------------------------------------------------------------------ */
/* output                                                                   */
/* ------------------------------------------------------------------------ */

static void json_str(FILE *f, const char *key, const char *v) {
    fprintf(f, "\"%s\":\"", key);
    for (const char *c = v; *c; c++) {
        if (*c == '"' || *c == '\\') fputc('\\', f), fputc(*c, f);
        else if ((unsigned char)*c < 0x20) fprintf(f, "\\u%04x", *c);
        else fputc(*c, f);
    }
    fputc('"', f);
}

static void json_tstat(FILE *f, const char *key, const tstat *t) {
    fprintf(f, ",\"%s\":{\"median_s\":%.9g,\"min_s\":%.9g,\"max_s\":%.9g,\"p10_s\":%.9g,\"p90_s\":%.9g,\"mean_s\":%.9g,\"iters\":%d}",
            key, t->med, t->min, t->max, t->p10, t->p90, t->mean, t->iters);
}

typedef struct runinfo {
    char commit[64], date[32];
    double load_start, load_end; /* 1-minute load average: a busy machine gives noisy figures */
    int cores;
    double copy_bw;
    size_t copy_bytes;
    double peak_flops; /* dense GEMM FLOP/s at peak_rows: the roofline's flat part */
    int64_t peak_rows;
    int warmup;
} runinfo;

/* The CPU backend's instruction path (isa.c), as the banner and JSON print it. */
static const char *cpu_isa_name(void) {
    const char *isa = dynmoe_cpu_isa();
    return isa ? isa : "none: DYNMOE_CPU_ISA names no path";
}

static void json_line(FILE *f, const bench *b, const runinfo *ri, const result *res) {
    const dynmoe_router *r = &b->router;
    fputc('{', f);
    json_str(f, "tool", "dynmoe-bench");
    fprintf(f, ",\"version\":%d,", dynmoe_version());
    json_str(f, "commit", ri->commit);
    fputc(',', f);
    json_str(f, "date", ri->date);
    fputc(',', f);
    json_str(f, "machine", b->dev.name);
    fputc(',', f);
    json_str(f, "machine_detail", b->dev.detail);
    fputc(',', f);
    json_str(f, "host_cpu", b->dev.host_cpu);
    fputc(',', f);
    if (!b->dev.cuda) {
        json_str(f, "cpu_isa", cpu_isa_name());
        fputc(',', f);
    }
    fprintf(f, "\"dense_available\":%s,", b->dev.has_dense ? "true" : "false");
    fprintf(f, "\"load_avg_start\":%.2f,\"load_avg_end\":%.2f,\"cores\":%d,", ri->load_start, ri->load_end,
            ri->cores);
    json_str(f, "backend", b->dev.cuda ? "cuda" : "cpu");
    fputc(',', f);
    json_str(f, "preset", PRESETS[b->o.preset].name);
    fputc(',', f);
    json_str(f, "model", b->model);
    fprintf(f, ",\"modified\":%s,", b->modified ? "true" : "false");
    json_str(f, "dtype", dtype_name(b->ex.dtype));
    fprintf(f, ",\"experts\":%d,\"zero_experts\":%d,", r->num_experts, r->num_zero_experts);
    json_str(f, "zero_kind", r->zero_kind == DYNMOE_ZERO_IDENTITY ? "identity" : "output");
    fprintf(f, ",\"top_k\":%d,\"hidden\":%d,\"inter\":%d,", r->top_k, b->ex.hidden, b->ex.inter);
    json_str(f, "act", act_name(b->ex.act));
    fputc(',', f);
    json_str(f, "gate_up", b->ex.gate_up == DYNMOE_GATE_UP_INTERLEAVED ? "interleaved" : "blocked");
    fprintf(f, ",\"biases\":%s,\"weight_on_input\":%s,", b->ex.b13 ? "true" : "false",
            r->weight_on_input ? "true" : "false");
    json_str(f, "weights", bq_format_name(b->ex.weight_format));
    fputc(',', f);
    json_str(f, "first_weights", bq_format_name(b->wfmt[0]));
    fprintf(f, ",\"group_size\":%d,\"expert_bytes\":%.0f,", b->ex.group_size, b->expert_bytes[res->w]);
    json_str(f, "score", score_name(r->score));
    fputc(',', f);
    json_str(f, "router", select_name(r->select));
    fprintf(f, ",\"top_p\":%g,\"threshold\":%g,\"groups\":%d,\"topk_groups\":%d,", r->top_p, r->threshold,
            r->num_groups, r->topk_groups);
    json_str(f, "norm", norm_name(r->norm));
    fprintf(f, ",\"scale\":%g,\"bias\":%s,\"logits_dtype\":\"f32\"", r->scale, b->bias ? "true" : "false");
    fprintf(f, ",\"tokens\":%lld,\"keep\":%g,\"zero_share\":%g,\"warmup\":%d,\"rounds\":%d,\"rotate\":%d,\"seed\":%llu",
            (long long)res->T, res->keep, res->zero, ri->warmup, b->o.rounds, b->nrot, (unsigned long long)b->o.seed);
    fprintf(f, ",\"ok\":%s", res->ok ? "true" : "false");
    if (!res->ok) {
        fputc(',', f);
        json_str(f, "error", res->error);
        fputs("}\n", f);
        return;
    }
    json_tstat(f, "layer", &res->layer);
    json_tstat(f, "route", &res->route);
    json_tstat(f, "plan", &res->plan);
    json_tstat(f, "combine", &res->combine);
    json_tstat(f, "dense", &res->dense);
    double t = res->layer.med;
    fprintf(f,
            ",\"time_s\":%.9g,\"us_per_token\":%.6g,\"routed_rows\":%.2f,\"active_experts\":%.2f"
            ",\"active_flops\":%.6g,\"tflops\":%.6g,\"weight_bytes\":%.6g,\"weight_gbps\":%.6g"
            ",\"dense_tflops\":%.6g,\"peak_tflops\":%.6g,\"peak_rows\":%lld,\"copy_gbps\":%.6g,\"copy_bytes\":%zu"
            ",\"flop_bound_s\":%.9g,\"bound_s\":%.9g,\"bound\":\"%s\""
            ",\"frac_of_bound\":%.5g,\"static_s\":%.9g,\"static_rows\":%.2f,\"speedup_vs_static\":%.5g"
            ",\"time_over_static\":%.5g,\"work_over_static\":%.5g,\"route_plan_combine_s\":%.9g"
            ",\"route_plan_combine_share\":%.5g,\"dense_over_time\":%.5g,\"copy_bound_s\":%.9g"
            ",\"copy_over_time\":%.5g,\"experts_vs_dense\":%.5g,\"time_over_first_weights\":%.5g}\n",
            t, 1e6 * t / (double)res->T, res->rows, res->active, res->flops, res->flops / t / 1e12,
            res->weight_bytes, res->weight_bytes / t / 1e9, res->dense.med > 0 ? res->flops / res->dense.med / 1e12 : 0,
            ri->peak_flops / 1e12, (long long)ri->peak_rows, ri->copy_bw / 1e9, ri->copy_bytes, res->flop_s,
            res->bound_s, res->bound_kind == 'F' ? "flops" : "memory", res->frac,
            res->static_s, res->static_rows, res->speedup, res->ratio, res->work,
            res->route.med + res->plan.med + res->combine.med, res->rpc_share, res->dense.med / t, res->mem_s,
            res->mem_s / t, res->dense.med / (t - (res->route.med + res->plan.med + res->combine.med)), res->over_first);
}

/* the table's weights column */
static const char *wts_short(dynmoe_weight_format f) {
    return f == DYNMOE_WEIGHTS_FP8_BLOCK ? "fp8" : bq_format_name(f);
}

static void table_header(const bench *b) {
    const char *fl = b->dev.cuda ? "TFLOP/s" : "GFLOP/s";
    printf("%-14s %-4s %-4s %-5s %6s %5s %5s | %9s %-21s %8s | %8s %7s | %7s %7s | %6s %5s %5s | %5s | %5s\n",
           "preset", "back", "type", "wts", "T", "keep", "zero", "time ms", "[min, max]", "us/tok", fl, "GB/s",
           "dense%", "roof%", "xstat", "t/t0", "work", "rpc", "xw");
}

static void table_row(const bench *b, const result *res) {
    char name[32];
    snprintf(name, sizeof name, "%.13s%s", PRESETS[b->o.preset].name, b->modified ? "*" : "");
    const char *wts = wts_short(b->ex.weight_format);
    if (!res->ok) {
        printf("%-14.14s %-4s %-4s %-5s %6lld %5.2f %5.2f | FAILED: %s\n", name, b->dev.cuda ? "cuda" : "cpu",
               dtype_name(b->ex.dtype), wts, (long long)res->T, res->keep, res->zero, res->error);
        return;
    }
    double t = res->layer.med, fscale = b->dev.cuda ? 1e12 : 1e9;
    char spread[64], dense[16], copy[16], xs[16];
    snprintf(spread, sizeof spread, "[%.3f, %.3f]", 1e3 * res->layer.min, 1e3 * res->layer.max);
    if (b->dev.has_dense) snprintf(dense, sizeof dense, "%.0f%%", 100 * res->dense.med / t);
    else snprintf(dense, sizeof dense, "n/a");
    snprintf(copy, sizeof copy, "%.0f%% %c", 100 * res->frac, res->bound_kind);
    snprintf(xs, sizeof xs, "%.2fx", res->speedup);
    char xw[16];
    if (res->over_first > 0) snprintf(xw, sizeof xw, "%.2f", res->over_first);
    else snprintf(xw, sizeof xw, "n/a");
    printf("%-14.14s %-4s %-4s %-5s %6lld %5.2f %5.2f | %9.3f %-21s %8.2f | %8.1f %7.1f | %7s %7s | %6s %5.2f %5.2f | "
           "%4.1f%% | %5s\n",
           name, b->dev.cuda ? "cuda" : "cpu", dtype_name(b->ex.dtype), wts, (long long)res->T, res->keep, res->zero,
           1e3 * t, spread, 1e6 * t / (double)res->T, res->flops / t / fscale, res->weight_bytes / t / 1e9, dense,
           copy, xs, res->ratio, res->work, 100 * res->rpc_share, xw);
    fflush(stdout);
}

static void commit_and_date(runinfo *ri) {
    snprintf(ri->commit, sizeof ri->commit, "%s", DYNMOE_BENCH_COMMIT);
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(ri->date, sizeof ri->date, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* ------------------------------------------------------------------------ */
/* main                                                                     */
/* ------------------------------------------------------------------------ */

static int setup(bench *b) {
    opts *o = &b->o;
    const preset *p = &PRESETS[o->preset];
    b->model = p->model;
    b->modified = o->E >= 0 || o->Z >= 0 || o->K >= 0 || o->H >= 0 || o->I >= 0 || o->G >= 0 || o->GK >= 0 ||
                  o->zero_kind >= 0 || o->select != DYNMOE_SELECT_TOPK;
    dynmoe_router r = DYNMOE_ROUTER_INIT;
    r.num_experts = o->E >= 0 ? o->E : p->E;
    r.num_zero_experts = o->Z >= 0 ? o->Z : p->Z;
    r.zero_kind = o->zero_kind >= 0 ? (dynmoe_zero_kind)o->zero_kind : p->zero_kind;
    r.top_k = o->K >= 0 ? o->K : p->K;
    r.score = p->score;
    r.select = o->select;
    r.top_p = o->top_p;
    r.threshold = o->threshold;
    r.num_groups = o->G >= 0 ? o->G : p->groups;
    r.topk_groups = o->GK >= 0 ? o->GK : (r.num_groups ? (p->topk_groups ? p->topk_groups : r.num_groups) : 0);
    r.norm = p->norm;
    r.scale = p->scale;
    if (r.num_experts + r.num_zero_experts > DYNMOE_MAX_EXPERTS)
        return bad("E + Z = %d is above the library's limit %d", r.num_experts + r.num_zero_experts, DYNMOE_MAX_EXPERTS);
    if (r.top_k > r.num_experts + r.num_zero_experts)
        return bad("--top-k %d is larger than E + Z = %d", r.top_k, r.num_experts + r.num_zero_experts);
    if (r.num_groups && (r.num_experts % r.num_groups))
        return bad("%d experts do not split into %d groups (set --groups 0 or a divisor)", r.num_experts, r.num_groups);
    if (r.num_groups && (r.topk_groups < 1 || r.topk_groups > r.num_groups))
        return bad("--topk-groups %d must be in [1, %d]", r.topk_groups, r.num_groups);
    for (int i = 0; i < o->nzero; i++)
        if (o->zero[i] > 0 && r.num_zero_experts == 0)
            return bad("--zero-share %g needs zero experts: the layer has none (use --zero-experts Z or a preset with "
                       "them: longcat-flash, zeda-qwen3)",
                       o->zero[i]);
    b->router = r;
    b->router_id = r;
    if (b->router_id.num_zero_experts == 0) b->router_id.num_zero_experts = 1;
    b->router_id.zero_kind = DYNMOE_ZERO_IDENTITY;

    dynmoe_experts ex = DYNMOE_EXPERTS_INIT;
    ex.num_experts = r.num_experts;
    ex.hidden = o->H >= 0 ? o->H : p->H;
    ex.inter = o->I >= 0 ? o->I : p->I;
    ex.act = p->act;
    ex.gate_up = p->gate_up;
    b->ex = ex;
    b->router.weight_on_input = p->weight_on_input;
    b->router_id.weight_on_input = p->weight_on_input;
    b->nw = o->nweights ? o->nweights : 1;
    for (int w = 0; w < b->nw; w++) {
        int f = o->nweights ? o->weights[w] : DYNMOE_WEIGHTS_PLAIN;
        b->wfmt[w] = f == W_NATIVE ? p->native : (dynmoe_weight_format)f;
        for (int v = 0; v < w; v++)
            if (b->wfmt[v] == b->wfmt[w])
                return bad("--weights: %s is listed twice (native is %s for %s)", bq_format_name(b->wfmt[w]),
                           bq_format_name(p->native), p->name);
    }
    for (int w = 0; w < b->nw; w++)
        if (b->wfmt[w] == DYNMOE_WEIGHTS_MXFP4 && ((ex.hidden % 32) || (ex.inter % 32)))
            return bad("--weights mxfp4 needs H and I divisible by 32 (blocks of 32 along K), got H %d, I %d",
                       ex.hidden, ex.inter);
    b->Tmax = 0;
    for (int i = 0; i < o->ntokens; i++)
        if (o->tokens[i] > b->Tmax) b->Tmax = o->tokens[i];
    b->nrot = o->profile ? 1 : o->rotate;

    /* Refuse what does not fit rather than crash or swap half-way. */
    size_t copy_bytes = b->dev.cuda ? (size_t)1 << 30 : (size_t)256 << 20;
    if (o->profile) copy_bytes = 0;
    dynmoe_dtype dt;
    if (o->dtype >= 0) {
        dt = (dynmoe_dtype)o->dtype;
    } else if (b->dev.cuda) {
        dt = DYNMOE_BF16;
    } else {
        dt = size_of(b, DYNMOE_F32, copy_bytes).total <= b->dev.mem_limit ? DYNMOE_F32 : DYNMOE_BF16;
    }
    sizes z = size_of(b, dt, copy_bytes);
    if (z.ws == 0)
        return bad("the library rejects this layer: %s", dynmoe_last_error());
    if (z.total > b->dev.mem_limit)
        return bad("this configuration needs %.1f GB of %s memory (weights %.1f GB in %s, workspace %.1f GB, dense "
                   "ceiling %.1f GB, inputs %.1f GB) but the limit is %.1f GB (%s of %.1f GB). Use fewer experts "
                   "(--experts), a smaller --dtype, or fewer --tokens.",
                   gb(z.total), b->dev.cuda ? "device" : "host", gb(z.weights), dtype_name(dt), gb(z.ws), gb(z.dense),
                   gb((size_t)b->nrot * z.per_set), gb(b->dev.mem_limit), b->dev.cuda ? "92% of free" : "80% of physical",
                   gb(b->dev.mem_total));
    b->ex.dtype = dt;
    b->ws_bytes = z.ws;

    /* weights: uniform in +-1/sqrt(H) resp. +-1/sqrt(I), so activations stay
     * O(1) (no overflow in f16, no denormals on the CPU) */
    size_t E = (size_t)r.num_experts, H = (size_t)b->ex.hidden, I = (size_t)b->ex.inter;
    size_t N = E + (size_t)r.num_zero_experts, K = (size_t)r.top_k, T = (size_t)b->Tmax;
    size_t N13 = act_gated(b->ex.act) ? 2 * I : I;
    if (p->biases) { /* small against the O(1) pre-activations */
        if (alloc_fill(b, &b->b13, E * N13, dt, 0.05f, o->seed + 15)) return -1;
        if (alloc_fill(b, &b->b2, E * H, dt, 0.05f, o->seed + 16)) return -1;
        b->ex.b13 = b->b13, b->ex.b2 = b->b2;
    }
    for (int w = 0; w < b->nw; w++) {
        dynmoe_experts ex = experts_for(b, b->wfmt[w], dt);
        void **m = b->wmem[w];
        if (ex.weight_format == DYNMOE_WEIGHTS_PLAIN) {
            if (alloc_fill(b, &m[0], E * N13 * H, dt, 1.0f / sqrtf((float)H), o->seed + 11)) return -1;
            if (alloc_fill(b, &m[1], E * H * I, dt, 1.0f / sqrtf((float)I), o->seed + 12)) return -1;
        } else {
            if (alloc_quant(b, ex.weight_format, (int32_t)E, (int64_t)N13, (int64_t)H, 1.0f / sqrtf((float)H),
                            o->seed + 11, &m[0], &m[2], &m[4]) ||
                alloc_quant(b, ex.weight_format, (int32_t)E, (int64_t)H, (int64_t)I, 1.0f / sqrtf((float)I),
                            o->seed + 12, &m[1], &m[3], &m[5]))
                return -1;
        }
        ex.w13 = m[0], ex.w2 = m[1], ex.w13_scale = m[2], ex.w2_scale = m[3], ex.w13_zero = m[4], ex.w2_zero = m[5];
        if (o->pack && ex.weight_format == DYNMOE_WEIGHTS_PLAIN) {
            if (b->dev.cuda) return bad("--pack: CPU only (CUDA experts are not packed)");
            if (dynmoe_experts_pack(b->ctx, &ex, &b->packed[w]) != DYNMOE_OK)
                return bad("--pack: %s", dynmoe_last_error());
            ex.packed = b->packed[w];
            /* the packed path's scratch (gathered rows, oneDNN's scratchpad) is extra */
            const size_t w1 = dynmoe_workspace_size(&b->router, &ex, b->Tmax);
            const size_t w2 = dynmoe_workspace_size(&b->router_id, &ex, b->Tmax);
            if (w1 > b->ws_bytes) b->ws_bytes = w1;
            if (w2 > b->ws_bytes) b->ws_bytes = w2;
        }
        b->exw[w] = ex;
        b->expert_bytes[w] = expert_bytes_of(&ex, o->group);
    }
    b->ex = b->exw[0];
    for (int j = 0; j < b->nrot; j++) {
        if (alloc_fill(b, &b->x[j], T * H, dt, 1.0f, o->seed + 100 + (uint64_t)j)) return -1;
        b->logits[j] = bdev_alloc(&b->dev, T * N * 4);
        b->mask[j] = bdev_alloc(&b->dev, T * E * 4);
        b->ids[j] = bdev_alloc(&b->dev, T * K * 4);
        b->ids_id[j] = bdev_alloc(&b->dev, T * K * 4);
        b->wts[j] = bdev_alloc(&b->dev, T * K * 4);
        if (!b->logits[j] || !b->mask[j] || !b->ids[j] || !b->ids_id[j] || !b->wts[j])
            return bad("allocation failed: %s", bdev_last_error());
    }
    if (alloc_fill(b, &b->out, T * H, dt, 1.0f, o->seed + 13)) return -1; /* not zeros: must be written */
    b->ws = bdev_alloc(&b->dev, b->ws_bytes);
    if (!b->ws) return bad("workspace allocation failed: %s", bdev_last_error());
    if (p->bias) { /* selection bias [E+Z]: small against the logit gap, see make_logits */
        float *hb = malloc(N * 4);
        if (!hb) return bad("out of host memory");
        random_floats(hb, N, 0.05f, o->seed + 14);
        b->bias = bdev_alloc(&b->dev, N * 4);
        int rc = !b->bias || bdev_upload(&b->dev, b->bias, hb, N * 4);
        free(hb);
        if (rc) return bad("bias: %s", bdev_last_error());
    }
    b->h_logits = malloc(T * N * 4);
    b->h_mask = malloc(T * E * 4);
    b->h_ids = malloc(T * K * 4);
    b->perm = malloc(N * 4 + 4);
    if (!b->h_logits || !b->h_mask || !b->h_ids || !b->perm) return bad("out of host memory");
    if (!o->profile) {
        if (bdev_dense_setup(&b->dev, dt, (int64_t)(T * K) > PEAK_MIN_ROWS ? (int64_t)(T * K) : PEAK_MIN_ROWS,
                             b->ex.hidden, b->ex.inter))
            return bad("dense ceiling setup: %s", bdev_last_error());
        if (bdev_copy_setup(&b->dev, copy_bytes)) return bad("copy setup: %s", bdev_last_error());
    }
    return 0;
}

/* Frees what setup allocated (NULLs are fine), the context and the device. */
static void teardown(bench *b) {
    bdev *d = &b->dev;
    for (int j = 0; j < MAX_ROT; j++) {
        bdev_free(d, b->x[j]);
        bdev_free(d, b->logits[j]);
        bdev_free(d, b->mask[j]);
        bdev_free(d, b->ids[j]);
        bdev_free(d, b->ids_id[j]);
        bdev_free(d, b->wts[j]);
    }
    for (int w = 0; w < MAX_WEIGHTS; w++) {
        dynmoe_packed_experts_destroy(b->packed[w]);
        b->packed[w] = NULL;
        for (int i = 0; i < 6; i++) bdev_free(d, b->wmem[w][i]);
    }
    bdev_free(d, b->b13);
    bdev_free(d, b->b2);
    bdev_free(d, b->out);
    bdev_free(d, b->ws);
    bdev_free(d, b->bias);
    free(b->h_logits);
    free(b->h_mask);
    free(b->h_ids);
    free(b->perm);
    dynmoe_ctx_destroy(b->ctx);
    bdev_destroy(d);
    free(b);
}

static void print_banner(const bench *b, const runinfo *ri) {
    const dynmoe_router *r = &b->router;
    const dynmoe_experts *ex = &b->exw[0];
    printf("# dynmoe-bench %d.%d.%d  commit %s  %s\n", DYNMOE_VERSION_MAJOR, DYNMOE_VERSION_MINOR,
           DYNMOE_VERSION_PATCH, ri->commit, ri->date);
    printf("# machine: %s (%s)  backend %s\n", b->dev.name, b->dev.detail, b->dev.cuda ? "cuda" : "cpu");
    if (!b->dev.cuda && strstr(b->dev.detail, "Prescott") && __builtin_cpu_supports("avx2"))
        printf("# WARNING: OpenBLAS did not recognise this CPU and runs its Prescott (SSE3) kernels, so the dense\n"
               "#   ceiling and dense%% are far too low; set OPENBLAS_CORETYPE (SkylakeX, Haswell, Zen) as\n"
               "#   scripts/bench.sh does on AVX-512 CPUs\n");
    printf("# layer: %s%s  E %d + Z %d (%s)  K %d  H %d  I %d  %s%s%s  router %s %s%s", b->model,
           b->modified ? " (modified: *)" : "", r->num_experts,
           r->num_zero_experts, r->zero_kind == DYNMOE_ZERO_IDENTITY ? "identity" : "zero-output", r->top_k,
           ex->hidden, ex->inter, act_name(ex->act), ex->gate_up == DYNMOE_GATE_UP_INTERLEAVED ? " interleaved" : "",
           ex->b13 ? " +biases" : "", select_name(r->select), score_name(r->score), b->bias ? "+bias" : "");
    if (r->num_groups) printf(" groups %d/%d", r->topk_groups, r->num_groups);
    printf(" norm %s scale %g%s  dtype %s\n", norm_name(r->norm), r->scale,
           r->weight_on_input ? "  weight on input" : "", dtype_name(ex->dtype));
    printf("# weights (as stored: values + scales + zero points):");
    for (int w = 0; w < b->nw; w++) {
        printf("%s %s", w ? "," : "", bq_format_name(b->wfmt[w]));
        if (b->wfmt[w] == DYNMOE_WEIGHTS_INT4) printf(" (group %d, zero points)", b->o.group);
        printf(" %.2f GB (%.2f MB per expert)", b->expert_bytes[w] * r->num_experts / 1e9, b->expert_bytes[w] / 1e6);
    }
    printf("\n");
    if (!b->dev.cuda) printf("# cpu path: %s (DYNMOE_CPU_ISA lowers it: scalar | avx2 | avx512; onednn runs --pack experts)\n", cpu_isa_name());
    for (int w = 0; w < b->nw; w++)
        if (b->packed[w])
            printf("# packed %s weights: %.2f GB, %s\n", bq_format_name(b->wfmt[w]),
                   dynmoe_packed_experts_bytes(b->packed[w]) / 1e9, dynmoe_packed_experts_path(b->packed[w]));
    if (ri->copy_bw > 0 && b->dev.has_dense)
        printf("# ceilings (best of N): copy %.1f GB/s (%s of %zu MiB, 2 x bytes / time); dense GEMM peak %.1f %s "
               "(%s, M %lld)\n",
               ri->copy_bw / 1e9, b->dev.cuda ? "cudaMemcpyAsync D2D" : "memcpy on every thread", ri->copy_bytes >> 20,
               ri->peak_flops / (b->dev.cuda ? 1e12 : 1e9), b->dev.cuda ? "TFLOP/s" : "GFLOP/s",
               b->dev.cuda ? "cublasGemmEx, fp32 accumulate" : "cblas_sgemm", (long long)ri->peak_rows);
    else if (ri->copy_bw > 0)
        printf("# ceilings (best of N): copy %.1f GB/s (memcpy on every thread of %zu MiB, 2 x bytes / time); dense\n"
               "#   GEMM: unavailable, built without BLAS (DYNMOE_BLAS=OFF or none found): dense%% is n/a and roof%%\n"
               "#   counts the copy bound only\n",
               ri->copy_bw / 1e9, ri->copy_bytes >> 20);
    printf("# timing: median [min, max] of timed calls after %d warm-up, %d rotated input sets, %s; the rows of one T\n"
           "#   measured round-robin %d times, samples pooled\n",
           ri->warmup, b->nrot, b->dev.cuda ? "CUDA events, L2 flushed before each call" : "wall clock", b->o.rounds);
    /* The 1-minute load average lags: a bench run just before adds up to
     * its thread count. Above the core count something surely competes. */
    if (!b->dev.cuda && ri->load_start >= 0)
        printf("# load average %.1f on %d cores before the run%s\n", ri->load_start, ri->cores,
               ri->load_start > ri->cores ? ": WARNING, other processes compete, figures are noisy" : "");
}

int main(int argc, char **argv) {
    bench *b = calloc(1, sizeof *b);
    if (!b) return 1;
    if (parse_args(argc, argv, &b->o)) return 2;
    opts *o = &b->o;
    if (o->ntokens == 0) {
        o->ntokens = 1;
        o->tokens[0] = -1; /* backend default, set below */
    }
    if (o->nkeep == 0) {
        o->nkeep = 3;
        o->keep[0] = 1.0, o->keep[1] = 0.5, o->keep[2] = 0.15;
    }
    if (o->nzero == 0) o->nzero = 1, o->zero[0] = 0.0;
    if (o->backend < 0) o->backend = dynmoe_cuda_available() ? DYNMOE_BACKEND_CUDA : DYNMOE_BACKEND_CPU;
    if (o->tokens[0] < 0) o->tokens[0] = o->backend == DYNMOE_BACKEND_CUDA ? 2048 : 512;

    char err[512];
    if (bdev_init(&b->dev, o->backend == DYNMOE_BACKEND_CUDA, err, sizeof err)) {
        fprintf(stderr, "dynmoe-bench: --backend cuda: %s\n", err);
        return 1;
    }
    dynmoe_status st = dynmoe_ctx_create(&b->ctx, (dynmoe_backend)o->backend, 0);
    if (st != DYNMOE_OK) {
        fprintf(stderr, "dynmoe-bench: dynmoe_ctx_create(%s): %s: %s\n", o->backend ? "cuda" : "cpu",
                dynmoe_status_name(st), dynmoe_last_error());
        return 1;
    }
    if (setup(b)) return 1;

    runinfo ri = {0};
    commit_and_date(&ri);
    ri.cores = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (getloadavg(&ri.load_start, 1) != 1) ri.load_start = -1;
    ri.load_end = ri.load_start;
    ri.warmup = o->warmup >= 0 ? o->warmup : (b->dev.cuda ? 3 : 1);
    if (o->rounds == 0) o->rounds = b->dev.cuda ? 1 : 3;

    if (o->profile) {
        result res = {.T = o->tokens[0], .keep = o->keep[0], .zero = o->zero[0]};
        if (prepare(b, &res)) {
            fprintf(stderr, "dynmoe-bench: %s\n", b->last_msg);
            return 1;
        }
        b->kind = RUN_LAYER;
        double t;
        if (bdev_time(&b->dev, run_once, b, ri.warmup, 0, &t)) goto profile_fail;
        bdev_sync(&b->dev);
        /* nothing but the layer's own launches inside the profiled window */
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        bdev_profiler(1);
        bdev_range_push("dynmoe_profile");
        int rc = run_once(b, ri.warmup);
        bdev_range_pop();
        bdev_sync(&b->dev);
        bdev_profiler(0);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        t = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        if (rc) goto profile_fail;
        printf("# profiled one dynmoe_moe_forward: %s %s %s T=%lld keep=%g zero=%g: %.3f ms wall (host clock, "
               "incl. launch and sync; use the table for timings)\n", b->model,
               b->dev.cuda ? "cuda" : "cpu", dtype_name(b->ex.dtype), (long long)res.T, res.keep, res.zero, 1e3 * t);
        teardown(b);
        return 0;
    profile_fail:
        fprintf(stderr, "dynmoe-bench: %s\n", b->last_msg);
        return 1;
    }

    /* the copy bound, once: it does not depend on the configuration */
    b->kind = RUN_COPY;
    tstat cp;
    samples cps = {0};
    int cp_fail = measure(b, RUN_COPY, 1, &cps, &cp);
    free(cps.v);
    if (cp_fail) {
        fprintf(stderr, "dynmoe-bench: copy bandwidth: %s\n", b->last_msg);
        return 1;
    }
    ri.copy_bytes = b->dev.cpy_bytes;
    /* Ceilings are the machine's capability: best of N (STREAM's convention);
     * the layer and its equal-FLOP dense comparison are medians. */
    ri.copy_bw = 2.0 * (double)b->dev.cpy_bytes / cp.min;
    /* the peak dense rate, once: the GEMM pair at the largest M of the run
     * (static top-K rows at the largest T, at least PEAK_MIN_ROWS) */
    if (b->dev.has_dense) {
        tstat pk;
        samples pks = {0};
        b->dense_rows = b->Tmax * b->router.top_k > PEAK_MIN_ROWS ? b->Tmax * b->router.top_k : PEAK_MIN_ROWS;
        if (!o->quiet) fprintf(stderr, "dense GEMM peak (M = %lld)...%s", (long long)b->dense_rows, isatty(2) ? "" : "\n");
        int pk_fail = measure(b, RUN_DENSE, 1, &pks, &pk);
        free(pks.v);
        if (pk_fail) {
            fprintf(stderr, "dynmoe-bench: dense GEMM: %s\n", b->last_msg);
            return 1;
        }
        ri.peak_rows = b->dense_rows;
        ri.peak_flops = 6.0 * (double)b->dense_rows * b->ex.hidden * b->ex.inter / pk.min;
        if (!o->quiet && isatty(2)) fprintf(stderr, "\r\033[K");
    }

    FILE *jf = NULL;
    if (o->json) {
        jf = fopen(o->json, "a");
        if (!jf) {
            fprintf(stderr, "dynmoe-bench: --json %s: %s\n", o->json, strerror(errno));
            return 1;
        }
    }
    print_banner(b, &ri);
    table_header(b);

    const int nw = b->nw, ncfg = o->nkeep * o->nzero, nres = nw * ncfg;
    int total = o->ntokens * nres, at = 0, failed = 0;
    result *res = calloc((size_t)nres, sizeof *res), *base = calloc((size_t)nw, sizeof *base);
    if (!res || !base) {
        fprintf(stderr, "dynmoe-bench: out of host memory\n");
        return 1;
    }
    for (int ti = 0; ti < o->ntokens; ti++) {
        /* static top-K of this T, per weight format: a requested row if keep 1 /
         * zero 0 is in the sweep, else measured for the speedup column only */
        int base_requested = 0;
        for (int ki = 0; ki < o->nkeep; ki++)
            for (int zi = 0; zi < o->nzero; zi++)
                if (o->keep[ki] == 1.0 && o->zero[zi] == 0.0) base_requested = 1;
        int base_ok[MAX_WEIGHTS];
        for (int w = 0; w < nw; w++) {
            base[w] = (result){.T = o->tokens[ti], .keep = 1.0, .zero = 0.0, .w = w};
            base_ok[w] = 1;
            for (int zi = 0; zi < o->nzero; zi++)
                for (int ki = 0; ki < o->nkeep; ki++)
                    res[w * ncfg + zi * o->nkeep + ki] =
                        (result){.T = o->tokens[ti], .keep = o->keep[ki], .zero = o->zero[zi], .w = w};
        }
        /* Round-robin: every configuration of every format once per round, samples pooled. */
        for (int round = 0; round < o->rounds; round++) {
            for (int w = 0; w < nw; w++) {
                b->ex = b->exw[w];
                if (base_ok[w] && measure_config(b, &base[w], ri.copy_bw, ri.peak_flops, at + 1 + w * ncfg, total,
                                                 base_requested)) {
                    /* keep going: the other rows still have meaning without the column */
                    fprintf(stderr, "%sdynmoe-bench: static top-K at T=%lld (%s): %s\n",
                            isatty(2) && !o->quiet ? "\n" : "", (long long)base[w].T, bq_format_name(b->wfmt[w]),
                            base[w].error);
                    base_ok[w] = 0;
                }
                for (int i = w * ncfg; i < (w + 1) * ncfg; i++) {
                    if (res[i].keep == 1.0 && res[i].zero == 0.0) continue; /* the same configuration as base */
                    if (round > 0 && !res[i].ok) continue;                   /* failed in an earlier round */
                    measure_config(b, &res[i], ri.copy_bw, ri.peak_flops, at + 1 + i, total, 1);
                }
            }
        }
        for (int i = 0; i < nres; i++) {
            result *r = &res[i], *bw = &base[r->w];
            if (r->keep == 1.0 && r->zero == 0.0) {
                *r = *bw; /* the same configuration: measured once per round */
                bw->s_layer = bw->s_route = bw->s_plan = bw->s_combine = bw->s_dense = (samples){0};
            }
            if (r->ok && bw->ok) {
                r->static_s = bw->layer.med;
                r->static_rows = bw->rows;
                r->speedup = bw->layer.med / r->layer.med;
                r->ratio = r->layer.med / bw->layer.med;
                r->work = bw->rows > 0 ? r->rows / bw->rows : 0;
            }
            const result *first = &res[i % ncfg]; /* the first format's row of this configuration */
            r->over_first = r->ok && first->ok ? r->layer.med / first->layer.med : 0;
        }
        for (int i = 0; i < nres; i++) {
            result *r = &res[i];
            at++;
            if (!r->ok) failed++;
            if (!o->quiet && isatty(2)) fprintf(stderr, "\r\033[K");
            b->ex = b->exw[r->w];
            table_row(b, r);
            if (getloadavg(&ri.load_end, 1) != 1) ri.load_end = -1;
            if (jf) {
                json_line(jf, b, &ri, r);
                fflush(jf);
            }
            free(r->s_layer.v), free(r->s_route.v), free(r->s_plan.v), free(r->s_combine.v), free(r->s_dense.v);
        }
        for (int w = 0; w < nw; w++)
            free(base[w].s_layer.v), free(base[w].s_route.v), free(base[w].s_plan.v), free(base[w].s_combine.v),
                free(base[w].s_dense.v);
    }
    free(base);
    free(res);
    if (jf) fclose(jf);
    if (!b->dev.cuda && ri.load_end >= 0)
        printf("# load average %.1f at the end on %d cores (the bench's own threads count)\n", ri.load_end, ri.cores);
    if (!b->dev.has_dense)
        printf("# dense%%: n/a, built without BLAS (-DDYNMOE_BLAS=OFF or none found): no dense GEMM was timed.\n");
    printf("# dense%%: dense GEMM time at the same FLOPs / time (the comparison; > 100%% = faster than dense BLAS).\n"
           "# roof%%: roofline bound / time, bound = max(FLOPs / peak dense rate, active weight bytes / copy bandwidth);\n"
           "#   F = FLOP-bound, M = memory-bound.\n"
           "# xstat/t0 compare with static top-K (keep 1, zero share 0) at the same T; work = routed rows / static rows.\n"
           "# rpc: route + plan + combine, each timed alone; combine = experts_forward over the same table with\n"
           "#      every real slot turned into an identity zero expert (no GEMM; includes a plan pass: an over-estimate).\n");

    teardown(b);
    return failed ? 1 : 0;
}
