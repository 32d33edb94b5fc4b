/*
 * emu.h — the execution core of the host emulation of dynmoe's CUDA kernels.
 *
 * A launch runs its CTAs one after another; the threads of a CTA are fibers (own stack, a
 * hand-written context switch on x86-64, ucontext elsewhere) on one OS thread, switched only
 * at synchronisation points: __syncthreads, __syncwarp, warp collectives (shuffles, ldmatrix,
 * mma.sync). So barriers and warp collectives really synchronise, and every collective sees all
 * 32 lanes' operands at once (the last lane to arrive computes the result for the warp).
 *
 * Traps, each a loud failure naming the block, thread and operation (emu::fail):
 *  - shared memory (dynamic and static) is filled with 0xff bytes at every block start: NaN in
 *    fp32, f16 and bf16, -1 in integers;
 *  - every 16-byte shared or global access of the seam (cuda/ptx.cuh) is checked for alignment,
 *    and shared accesses for bounds;
 *  - shared accesses of the seam are race-checked: a read of a word written by another thread,
 *    or a write of a word read or written by another thread, with no __syncthreads between
 *    (compute-sanitizer racecheck's rule) fails;
 *  - a barrier or collective that cannot complete (divergent __syncthreads, a lane missing from
 *    a collective) fails as a deadlock instead of hanging; lanes of one collective must execute
 *    the same instruction;
 *  - launches check block size and dynamic shared memory against the limits (48 KiB, or what
 *    cudaFuncSetAttribute raised, at most 163 KiB: sm_80's opt-in maximum);
 *  - device buffers from emu::dalloc end at a PROT_NONE page (an overrun faults) with the
 *    slack before it poisoned and checked (emu::check_slack).
 */
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <vector>

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};

namespace emu {

[[noreturn]] void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* One cp.async in flight: lands at the wait_group covering its group. */
struct CpWrite {
    uint32_t dst;
    uint8_t data[16];
};

struct Context {
    void *sp = nullptr;           /* saved stack pointer (x86-64 switch) */
    void *impl = nullptr;         /* ucontext_t (fallback) */
    void *stack_lo = nullptr;     /* for ASan's fiber annotations */
    size_t stack_bytes = 0;
};

struct Thread {
    Context ctx;
    char *stack = nullptr;
    size_t stack_bytes = 0;
    dim3 idx;
    int tid = 0, warp = 0, lane = 0;
    bool done = false;
    std::vector<CpWrite> open;                /* issued, not committed */
    std::deque<std::vector<CpWrite>> groups;  /* committed, oldest first */
};

struct Warp {
    int lanes = 32; /* fewer in a block's last, partial warp */
    int arrived = 0;
    uint64_t gen = 0;
    void *io[32];
    const char *what[32];
};

/* Race shadow of one 4-byte shared word: the barrier interval and thread of the last write
 * and of the last read(s) (reader -2: several threads). */
struct Shadow {
    uint64_t w_iv, r_iv;
    int32_t writer, reader;
};

struct Block {
    dim3 idx;
    int nthreads = 0, live = 0;
    std::vector<Warp> warps;
    int bar_arrived = 0;
    uint64_t bar_gen = 0;
    uint64_t interval = 0; /* race epoch: changes at every __syncthreads */
};

extern Thread *cur;      /* the running fiber */
extern Block *blk;       /* the running block */
extern dim3 grid_dim, block_dim;
extern uint64_t progress; /* bumped at every arrival and exit: deadlock detection */
extern unsigned char *smem;       /* the block's shared memory */
extern size_t smem_dyn, smem_used, smem_limit;
extern std::vector<Shadow> shadow; /* per 4-byte word of smem */

/* Switches to the next live fiber of the block (round robin). */
void yield();
[[noreturn]] void deadlock(const char *what);

template <class P>
inline void wait_until(P pred, const char *what) {
    while (!pred()) {
        const uint64_t seen = progress;
        yield();
        /* every other fiber had a turn and none arrived anywhere or exited: stuck for good */
        if (!pred() && progress == seen) deadlock(what);
    }
}

/* __syncthreads: all live threads of the block. */
void barrier();

/* A warp collective: every lane posts `io` (its own operands and result slots) under the name
 * of the instruction; the last lane to arrive runs compute(io[32]) for all; then all go on. */
template <class F>
inline void warp_collective(const char *what, void *io, F &&compute) {
    Warp &w = blk->warps[cur->warp];
    if (w.lanes != 32) fail("%s in a partial warp of %d lanes (full-warp masks only)", what, w.lanes);
    w.io[cur->lane] = io;
    w.what[cur->lane] = what;
    const uint64_t gen = w.gen;
    progress++;
    if (++w.arrived == 32) {
        for (int l = 0; l < 32; l++)
            if (strcmp(w.what[l], what) != 0)
                fail("warp %d: lane %d executes %s while lane %d executes %s (divergent collective)", cur->warp,
                     l, w.what[l], cur->lane, what);
        compute(w.io);
        w.arrived = 0;
        w.gen++;
        return;
    }
    wait_until([&] { return w.gen != gen; }, what);
}

/* ---- shared memory */
void *dyn_smem();
void *shared_alloc(int site, size_t bytes, size_t align);
template <class T>
inline T &shared_var(int site) {
    return *static_cast<T *>(shared_alloc(site, sizeof(T), alignof(T)));
}
/* A shared-window address -> pointer, checked: in bounds, aligned to `align`. */
unsigned char *smem_ptr(uint32_t addr, size_t bytes, size_t align, const char *what);
uint32_t smem_addr_of(const void *p);
/* Race bookkeeping of an access of `bytes` at addr by thread `tid` of the block. */
void smem_note_read(uint32_t addr, size_t bytes, int tid, const char *what);
void smem_note_write(uint32_t addr, size_t bytes, int tid, const char *what);

/* ---- global memory */
void check_global_align(const void *p, size_t align, const char *what);

/* ---- launches */
void set_max_dyn_smem(const void *kernel, int bytes);
/* Runs grid x block threads of body. A bad configuration counts in launch_errors and sets the
 * error cudaGetLastError reports; the kernel does not run. */
void launch(const void *kernel, const char *name, dim3 grid, dim3 block, size_t dyn_smem,
            const std::function<void()> &body);
extern int launch_errors;
extern int last_error;

/* ---- device buffers: end flush against a PROT_NONE page, slack poisoned (0xff) and checked */
void *dalloc(size_t bytes);
void dfree(void *p);
/* Fails if a byte between a buffer's end and its guard page was written. */
void check_slack();

} // namespace emu

/* Kernel-side names. */
#define threadIdx (::emu::cur->idx)
#define blockIdx (::emu::blk->idx)
#define blockDim (::emu::block_dim)
#define gridDim (::emu::grid_dim)

/* A translated launch k<<<grid, block, smem, stream>>>(args). Streams are not emulated: work
 * runs when launched, in launch order. */
template <class K, class F>
inline void emu_launch(K *kernel, const char *name, dim3 grid, dim3 block, size_t dyn_smem, const void *stream,
                       F &&body) {
    (void)stream;
    ::emu::launch(reinterpret_cast<const void *>(kernel), name, grid, block, dyn_smem, std::function<void()>(body));
}
