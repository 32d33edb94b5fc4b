/* cpu/isa.c — which instruction path the CPU expert kernels take, chosen at
 * run time: the best one this CPU has, lowered by DYNMOE_CPU_ISA (a path
 * name), which is read at every call so that a test can run every path in
 * one process. The choice is one pure function (dm_cpu_isa_select); the rest
 * reads the CPU and the environment.
 *
 *   scalar  plain C (ffn_scalar.c): any CPU, and the last resort
 *   avx2    AVX2 + FMA + F16C (ffn_panels.c, gemm_skinny.c); F16C is part of
 *           the path for every dtype, so the path never depends on the dtype
 *           (every AVX2 CPU so far has it)
 *   avx512  AVX-512 F/BW/DQ/VL on top of avx2: the panels of ffn_avx512.c
 *           (16-lane FMAs) for experts with even H and I; the skinny
 *           kernels (decode) stay avx2's: no AVX-512 skinny kernel yet,
 *           although bf16 decode measured instruction-bound on the Xeon
 *   onednn  packed experts (dynmoe_experts_pack) on oneDNN matmuls, which
 *           pick AMX / AVX-512 / AVX2 kernels themselves (onednn.c); the
 *           rows it does not take run on the best of the paths above. The
 *           default only where oneDNN has kernels dynmoe lacks (AMX);
 *           DYNMOE_CPU_ISA=onednn takes it on any CPU of a build with
 *           oneDNN (so the AVX2 machines of CI test it). */
#define _DEFAULT_SOURCE /* syscall() under -std=c11 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "cpu.h"
#include "onednn.h"
#include "simd.h"

static const char *const isa_names[DM_CPU_ISA_COUNT] = {"scalar", "avx2", "avx512", "onednn"};

const char *dm_cpu_isa_name(dm_cpu_isa isa) {
    return (unsigned)isa < DM_CPU_ISA_COUNT ? isa_names[isa] : "unknown";
}

int dm_cpu_isa_select(const char *request, dm_cpu_isa best, int have_onednn) {
    if (request == NULL || request[0] == '\0') return (int)best;
    for (int i = 0; i < DM_CPU_ISA_COUNT; i++) {
        if (strcmp(request, isa_names[i]) != 0) continue;
        if (i == DM_CPU_ISA_ONEDNN && have_onednn) return i;
        return i < (int)best ? i : (int)best;
    }
    return -1;
}

/* AVX-512 foundation + the avx512_core set oneDNN asks for (F, BW, DQ, VL),
 * which every AMX CPU also has. */
static int has_avx512_core(void) {
#ifdef DM_CPU_X86
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#else
    return 0;
#endif
}

static dm_cpu_isa isa_kernels_of_cpu(void) {
#ifdef DM_CPU_X86
    /* F16C: CPUID leaf 1, ECX bit 29 (clang's __builtin_cpu_supports lacks "f16c"). */
    unsigned eax, ebx, ecx = 0, edx;
    const int f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29));
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c)
        return has_avx512_core() ? DM_CPU_ISA_AVX512 : DM_CPU_ISA_AVX2;
#endif
    return DM_CPU_ISA_SCALAR;
}

/* Read once: CPUID traps to the hypervisor in a VM (a forward at T = 1 on
 * a KVM guest spent ~3 % of its time here when it ran every call). The race
 * of two first calls is benign: both store the same value. */
dm_cpu_isa dm_cpu_isa_kernels(void) {
    static _Atomic int known = -1;
    int v = atomic_load_explicit(&known, memory_order_relaxed);
    if (v < 0) atomic_store_explicit(&known, v = (int)isa_kernels_of_cpu(), memory_order_relaxed);
    return (dm_cpu_isa)v;
}

/* AMX-BF16 tiles usable by this process: CPUID.(7,0):EDX bits 24 (AMX-TILE)
 * and 22 (AMX-BF16), the OS saving the tile state (XCR0 bits 17-18), and
 * Linux's permission for it (arch_prctl ARCH_REQ_XCOMP_PERM, which oneDNN
 * would make too). Seen true on the Xeon of family 6 model 167 (AMX exposed,
 * CpuIsa.DefaultFollowsTheCpuFlags) and false on model 207 (none exposed). */
static int amx_bf16_usable(void) {
#if defined(DM_CPU_X86) && defined(__linux__)
    unsigned eax, ebx, ecx = 0, edx = 0;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) || !(edx & (1u << 24)) || !(edx & (1u << 22))) return 0;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & (1u << 27))) return 0; /* OSXSAVE */
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & (3u << 17)) != (3u << 17)) return 0;
    return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
#else
    return 0;
#endif
}

/* onednn is the default only where oneDNN has kernels dynmoe lacks: AMX.
 * On the AVX-512 Xeon without AMX (family 6 model 207, 2 cores) the avx512
 * path beat oneDNN 2.6.3's packed matmuls at every T measured; on the AMX
 * one (model 167) packed bf16 experts ran 3.7x faster than avx512 at T =
 * 2048 (docs/cpu.md). */
dm_cpu_isa dm_cpu_isa_best(void) {
    static _Atomic int amx = -1;
    int v = atomic_load_explicit(&amx, memory_order_relaxed);
    if (v < 0) atomic_store_explicit(&amx, v = amx_bf16_usable(), memory_order_relaxed);
    if (dm_onednn_available() && v) return DM_CPU_ISA_ONEDNN;
    return dm_cpu_isa_kernels();
}

dynmoe_status dm_cpu_isa_current(dm_cpu_isa *isa) {
    const char *request = getenv("DYNMOE_CPU_ISA");
    const int i = dm_cpu_isa_select(request, dm_cpu_isa_best(), dm_onednn_available());
    if (i < 0)
        return dm_fail(DYNMOE_ERR_INVALID_ARGUMENT,
                       "dynmoe: DYNMOE_CPU_ISA=%s names no CPU path (scalar, avx2, avx512, onednn)", request);
    *isa = (dm_cpu_isa)i;
    return DYNMOE_OK;
}

const char *dynmoe_cpu_isa(void) {
    dm_cpu_isa isa = DM_CPU_ISA_SCALAR;
    return dm_cpu_isa_current(&isa) == DYNMOE_OK ? dm_cpu_isa_name(isa) : NULL;
}
