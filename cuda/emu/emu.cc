/* emu.cc — fibers, the block scheduler, shared memory and its traps (see emu.h). */
#include "emu.h"

#include <csignal>
#include <cstdarg>
#include <sys/mman.h>
#include <unistd.h>
#include <unordered_map>

#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EMU_ASAN 1
#endif
#endif
#ifdef EMU_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace emu {

Thread *cur;
Block *blk;
dim3 grid_dim, block_dim;
uint64_t progress;
unsigned char *smem;
size_t smem_dyn, smem_used, smem_limit;
std::vector<Shadow> shadow;
int launch_errors;
int last_error;

namespace {

constexpr size_t kArenaBytes = 256 * 1024;
constexpr size_t kStaticLimit = 48 * 1024;    /* static __shared__ per block */
constexpr size_t kDefaultDynLimit = 48 * 1024; /* dynamic, without cudaFuncSetAttribute */
constexpr size_t kOptinLimit = 166912;         /* sm_80: 163 KiB per block, static + dynamic */
constexpr size_t kStackBytes = 256 * 1024;

std::vector<Thread *> pool;    /* fibers, reused by every launch */
std::vector<Thread *> threads; /* fibers of the running block, by tid */
Context main_ctx;
Context *switched_from; /* for ASan: the context that switched to the running one */
const std::function<void()> *body;
const char *kernel_name = "";
uint64_t interval_counter;
std::vector<std::pair<int, size_t>> statics; /* site -> offset, this block */
std::unordered_map<const void *, int> max_dyn;

struct Alloc {
    unsigned char *map, *data;
    size_t map_bytes, bytes, slack;
};
std::vector<Alloc> allocs;

/* ------------------------------------------------------------------ context switch */

#if defined(__x86_64__)
/* Saves the callee-saved registers and the stack pointer of the running context in *save and
 * resumes the one whose stack pointer is `next` (SysV x86-64: rbx, rbp, r12-r15 are preserved
 * across a call; everything else the caller of emu_ctx_swap already treats as clobbered). */
extern "C" void emu_ctx_swap(void **save, void *next);
asm(R"(
    .text
    .p2align 4
    .type emu_ctx_swap, @function
emu_ctx_swap:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_ctx_swap, .-emu_ctx_swap
)");

void ctx_init(Context *c, char *stack, size_t bytes, void (*entry)()) {
    uintptr_t top = ((uintptr_t)stack + bytes) & ~(uintptr_t)15;
    void **sp = (void **)top;
    *--sp = nullptr;         /* entry's return address slot: rsp % 16 == 8 at its first instruction */
    *--sp = (void *)entry;   /* popped by ret */
    for (int i = 0; i < 6; i++) *--sp = nullptr; /* rbp rbx r12 r13 r14 r15 */
    c->sp = sp;
    c->stack_lo = stack;
    c->stack_bytes = bytes;
}
void ctx_swap(Context *from, Context *to) { emu_ctx_swap(&from->sp, to->sp); }
#else
void ctx_init(Context *c, char *stack, size_t bytes, void (*entry)()) {
    if (!c->impl) c->impl = new ucontext_t;
    ucontext_t *u = (ucontext_t *)c->impl;
    getcontext(u);
    u->uc_stack.ss_sp = stack;
    u->uc_stack.ss_size = bytes;
    u->uc_link = nullptr;
    makecontext(u, entry, 0);
    c->stack_lo = stack;
    c->stack_bytes = bytes;
}
void ctx_swap(Context *from, Context *to) {
    if (!from->impl) from->impl = new ucontext_t;
    swapcontext((ucontext_t *)from->impl, (ucontext_t *)to->impl);
}
#endif

void after_switch(void *fake) {
#ifdef EMU_ASAN
    const void *lo = nullptr;
    size_t n = 0;
    __sanitizer_finish_switch_fiber(fake, &lo, &n);
    if (switched_from && !switched_from->stack_lo) {
        switched_from->stack_lo = (void *)lo;
        switched_from->stack_bytes = n;
    }
#else
    (void)fake;
#endif
}

/* Runs `to`; returns when someone switches back to `from`. from_exits: `from` never resumes. */
void switch_ctx(Context *from, Context *to, bool from_exits) {
    void *fake = nullptr;
#ifdef EMU_ASAN
    __sanitizer_start_switch_fiber(from_exits ? nullptr : &fake, to->stack_lo, to->stack_bytes);
#else
    (void)from_exits;
#endif
    switched_from = from;
    ctx_swap(from, to);
    after_switch(fake);
}

Thread *next_live(Thread *t) {
    const int n = (int)threads.size();
    for (int i = 1; i <= n; i++) {
        Thread *c = threads[(t->tid + i) % n];
        if (!c->done) return c;
    }
    return nullptr;
}

void release_barrier() {
    blk->bar_arrived = 0;
    blk->bar_gen++;
    blk->interval = ++interval_counter;
}

void fiber_entry() {
    after_switch(nullptr);
    (*body)();
    Thread *me = cur;
    me->done = true;
    blk->live--;
    progress++;
    /* threads that exited do not hold a barrier up */
    if (blk->bar_arrived > 0 && blk->bar_arrived == blk->live) release_barrier();
    Thread *next = next_live(me);
    if (next) {
        cur = next;
        switch_ctx(&me->ctx, &next->ctx, true);
    } else {
        switch_ctx(&me->ctx, &main_ctx, true);
    }
    fail("a finished fiber was resumed");
}

char *map_stack(size_t bytes) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    char *p = (char *)mmap(nullptr, bytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                           -1, 0);
    if (p == MAP_FAILED) fail("mmap of a fiber stack failed");
    mprotect(p, page, PROT_NONE); /* overflow faults */
    return p + page;
}

/* Frees the fibers and the arena at exit (LeakSanitizer runs in CI's sanitizer build). */
struct Teardown {
    ~Teardown() {
        const size_t page = (size_t)sysconf(_SC_PAGESIZE);
        for (Thread *t : pool) {
            munmap(t->stack - page, t->stack_bytes + page);
#if !defined(__x86_64__)
            delete (ucontext_t *)t->ctx.impl;
#endif
            delete t;
        }
        pool.clear();
        free(smem);
        smem = nullptr;
    }
} teardown;

char alt_stack[64 * 1024];
void on_fault(int sig) {
    char msg[256];
    int n = snprintf(msg, sizeof msg,
                     "emu: %s in kernel %s, block %u, thread %d: an access outside every buffer "
                     "(past a device buffer's end, or a fiber stack overflow)\n",
                     sig == SIGSEGV ? "SIGSEGV" : "SIGBUS", kernel_name, blk ? blk->idx.x : 0u, cur ? cur->tid : -1);
    if (n > 0) (void)!write(2, msg, (size_t)n);
    _exit(4);
}
void install_fault_handler() {
    static bool done = false;
    if (done) return;
    done = true;
    stack_t ss{};
    ss.ss_sp = alt_stack;
    ss.ss_size = sizeof alt_stack;
    sigaltstack(&ss, nullptr);
    struct sigaction sa{};
    sa.sa_handler = on_fault;
    sa.sa_flags = SA_ONSTACK;
    sigaction(SIGSEGV, &sa, nullptr);
    sigaction(SIGBUS, &sa, nullptr);
}

} // namespace

void fail(const char *fmt, ...) {
    fflush(stdout);
    if (blk && cur)
        fprintf(stderr, "emu: kernel %s, block %u, thread %d (warp %d lane %d): ", kernel_name, blk->idx.x, cur->tid,
                cur->warp, cur->lane);
    else
        fprintf(stderr, "emu: ");
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    fflush(stderr);
    _exit(3);
}

void deadlock(const char *what) {
    fail("deadlock at %s: every live thread waits and none can go on (a barrier or collective "
         "not reached by all threads)",
         what);
}

void yield() {
    Thread *me = cur;
    Thread *next = next_live(me);
    if (!next || next == me) return;
    cur = next;
    switch_ctx(&me->ctx, &next->ctx, false);
}

void barrier() {
    const uint64_t gen = blk->bar_gen;
    progress++;
    if (++blk->bar_arrived == blk->live) {
        release_barrier();
        return;
    }
    wait_until([&] { return blk->bar_gen != gen; }, "__syncthreads");
}

/* ------------------------------------------------------------------ shared memory */

void *dyn_smem() { return smem; }

void *shared_alloc(int site, size_t bytes, size_t align) {
    for (auto &s : statics)
        if (s.first == site) return smem + s.second;
    if (align < 16) align = 16;
    size_t at = smem_used > smem_dyn ? smem_used : smem_dyn;
    at = (at + align - 1) / align * align;
    const size_t static_bytes = at + bytes - smem_dyn;
    if (static_bytes > kStaticLimit || at + bytes > smem_limit)
        fail("shared memory: %zu bytes of static __shared__ after %zu dynamic exceed the limit (%zu static, %zu "
             "in all)",
             static_bytes, smem_dyn, kStaticLimit, smem_limit);
    statics.push_back({site, at});
    smem_used = at + bytes;
    return smem + at;
}

uint32_t smem_addr_of(const void *p) {
    const unsigned char *c = (const unsigned char *)p;
    if (c < smem || c > smem + kArenaBytes) fail("__cvta_generic_to_shared of %p: not a shared-memory address", p);
    return (uint32_t)(c - smem);
}

unsigned char *smem_ptr(uint32_t addr, size_t bytes, size_t align, const char *what) {
    if (addr % align != 0) fail("%s: shared address 0x%x is not %zu-byte aligned", what, addr, align);
    const size_t end = smem_used > smem_dyn ? smem_used : smem_dyn;
    if ((size_t)addr + bytes > end)
        fail("%s: shared address 0x%x + %zu is past the block's %zu bytes of shared memory", what, addr, bytes, end);
    return smem + addr;
}

void smem_note_read(uint32_t addr, size_t bytes, int tid, const char *what) {
    const uint64_t iv = blk->interval;
    for (size_t w = addr / 4; w < (addr + bytes + 3) / 4; w++) {
        Shadow &s = shadow[w];
        if (s.w_iv == iv && s.writer != tid)
            fail("race: %s by thread %d reads shared 0x%zx, written by thread %d with no __syncthreads between", what,
                 tid, w * 4, s.writer);
        if (s.r_iv == iv) {
            if (s.reader != tid) s.reader = -2;
        } else {
            s.r_iv = iv;
            s.reader = tid;
        }
    }
}

void smem_note_write(uint32_t addr, size_t bytes, int tid, const char *what) {
    const uint64_t iv = blk->interval;
    for (size_t w = addr / 4; w < (addr + bytes + 3) / 4; w++) {
        Shadow &s = shadow[w];
        if (s.r_iv == iv && s.reader != tid)
            fail("race: %s by thread %d writes shared 0x%zx, read by %s%d with no __syncthreads between", what, tid,
                 w * 4, s.reader == -2 ? "several threads, e.g. not " : "thread ", s.reader == -2 ? tid : s.reader);
        if (s.w_iv == iv && s.writer != tid)
            fail("race: %s by thread %d writes shared 0x%zx, written by thread %d with no __syncthreads between", what,
                 tid, w * 4, s.writer);
        s.w_iv = iv;
        s.writer = tid;
    }
}

void check_global_align(const void *p, size_t align, const char *what) {
    if ((uintptr_t)p % align != 0) fail("%s: global address %p is not %zu-byte aligned", what, p, align);
}

/* ------------------------------------------------------------------ launches */

void set_max_dyn_smem(const void *kernel, int bytes) { max_dyn[kernel] = bytes; }

void launch(const void *kernel, const char *name, dim3 grid, dim3 block, size_t dyn_smem_bytes,
            const std::function<void()> &fn) {
    const size_t nthreads = (size_t)block.x * block.y * block.z;
    const auto it = max_dyn.find(kernel);
    size_t dyn_limit = it == max_dyn.end() ? kDefaultDynLimit : (size_t)it->second;
    if (dyn_limit > kOptinLimit) dyn_limit = kOptinLimit;
    const char *bad = nullptr;
    if (nthreads == 0 || nthreads > 1024) bad = "block size not in [1, 1024]";
    else if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535) bad = "grid size";
    else if (dyn_smem_bytes > dyn_limit) bad = "dynamic shared memory over the kernel's limit";
    if (bad) {
        fprintf(stderr, "emu: launch of %s: %s (grid %u,%u,%u block %zu, %zu bytes of dynamic shared memory, limit %zu)\n",
                name, bad, grid.x, grid.y, grid.z, nthreads, dyn_smem_bytes, dyn_limit);
        launch_errors++;
        last_error = 9; /* cudaErrorInvalidConfiguration */
        return;
    }
    install_fault_handler();
    if (!smem) {
        smem = (unsigned char *)aligned_alloc(128, kArenaBytes);
        shadow.assign(kArenaBytes / 4, Shadow{0, 0, -1, -1});
    }
    while (pool.size() < nthreads) {
        Thread *t = new Thread;
        t->stack = map_stack(kStackBytes);
        t->stack_bytes = kStackBytes;
        pool.push_back(t);
    }
    threads.assign(pool.begin(), pool.begin() + (long)nthreads);

    grid_dim = grid;
    block_dim = block;
    kernel_name = name;
    body = &fn;
    Block b;
    b.nthreads = (int)nthreads;
    b.warps.resize((nthreads + 31) / 32);
    for (size_t w = 0; w < b.warps.size(); w++) b.warps[w].lanes = (int)(nthreads - 32 * w < 32 ? nthreads - 32 * w : 32);
    const size_t nblocks = (size_t)grid.x * grid.y * grid.z;
    for (size_t bi = 0; bi < nblocks; bi++) {
        b.idx = dim3((unsigned)(bi % grid.x), (unsigned)(bi / grid.x % grid.y), (unsigned)(bi / grid.x / grid.y));
        b.live = (int)nthreads;
        b.bar_arrived = 0;
        b.interval = ++interval_counter;
        for (auto &w : b.warps) w.arrived = 0;
        blk = &b;
        memset(smem, 0xff, kArenaBytes); /* poison: NaN in every float format, -1 in integers */
        smem_dyn = dyn_smem_bytes;
        smem_used = dyn_smem_bytes;
        smem_limit = it == max_dyn.end() ? kDefaultDynLimit : kOptinLimit; /* static + dynamic */
        statics.clear();
        for (size_t t = 0; t < nthreads; t++) {
            Thread *th = threads[t];
            th->tid = (int)t;
            th->idx = dim3((unsigned)(t % block.x), (unsigned)(t / block.x % block.y), (unsigned)(t / block.x / block.y));
            th->warp = (int)(t / 32);
            th->lane = (int)(t % 32);
            th->done = false;
            th->open.clear();
            th->groups.clear();
            ctx_init(&th->ctx, th->stack, th->stack_bytes, fiber_entry);
        }
        cur = threads[0];
        switch_ctx(&main_ctx, &cur->ctx, false);
        blk = nullptr;
        cur = nullptr;
    }
    threads.clear();
}

/* ------------------------------------------------------------------ device buffers */

void *dalloc(size_t bytes) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t rounded = (bytes + 15) / 16 * 16;
    const size_t data_pages = (rounded + page - 1) / page * page;
    const size_t map_bytes = data_pages + 2 * page;
    unsigned char *m = (unsigned char *)mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                                             -1, 0);
    if (m == MAP_FAILED) fail("dalloc: mmap of %zu bytes failed", map_bytes);
    mprotect(m, page, PROT_NONE);
    mprotect(m + page + data_pages, page, PROT_NONE);
    unsigned char *data = m + page + data_pages - rounded; /* 16-byte aligned, ends at the guard page */
    memset(data, 0xff, rounded);                            /* uninitialised device memory reads as NaN */
    allocs.push_back({m, data, map_bytes, bytes, rounded - bytes});
    return data;
}

void dfree(void *p) {
    for (size_t i = 0; i < allocs.size(); i++)
        if (allocs[i].data == p) {
            munmap(allocs[i].map, allocs[i].map_bytes);
            allocs.erase(allocs.begin() + (long)i);
            return;
        }
    fail("dfree of %p: not a buffer of dalloc", p);
}

void check_slack() {
    for (auto &a : allocs)
        for (size_t i = 0; i < a.slack; i++)
            if (a.data[a.bytes + i] != 0xff)
                fail("a kernel wrote %zu bytes past the end of a %zu-byte device buffer", i + 1, a.bytes);
}

} // namespace emu
