/*
 * ep_test.cc — csrc/ep/ep_kernels.cu (destination of each slot, packing of the travelling x
 * rows, fill) under the emulation against a plain host loop of the same contract
 * (csrc/ep/ep_cuda.h): exact and capacity modes, replicated experts, rows of 16-byte multiples
 * and of 8-, 4- and 2-byte multiples (each copy width), bf16 and f32. Outputs poisoned before
 * each call.
 */
#include <cuda_runtime.h>

#include <cstdio>
#include <random>
#include <vector>

#include "ep_kernels.emu.inc"
#include "reference.h"

namespace {

template <class T>
T *upload(const std::vector<T> &v) {
    T *p = (T *)emu::dalloc(v.size() * sizeof(T) + 1);
    memcpy(p, v.data(), v.size() * sizeof(T));
    return p;
}
template <class T>
std::vector<T> download(const T *p, size_t n) {
    return std::vector<T>(p, p + n);
}

struct Case {
    int32_t E, Z, R, P, K, H, esize, capacity;
    int64_t T;
};

int run(const Case &c, uint64_t seed) {
    std::mt19937_64 rng(seed);
    auto I = [&](int a, int b) { return (int)std::uniform_int_distribution<int>(a, b)(rng); };
    const int64_t n = c.T * c.K;
    const int32_t E = c.E, P = c.P, R = c.R;
    /* placement: expert e has 1..P copies on distinct ranks; this rank (0) may hold one */
    std::vector<int32_t> copies(E), copy_rank((size_t)E * P, -1), copy_local((size_t)E * P, -1), self(E, -1);
    std::vector<int32_t> per_rank(R, 0);
    for (int32_t e = 0; e < E; e++) {
        copies[e] = I(1, std::min(P, R));
        const int32_t r0 = I(0, R - 1);
        for (int32_t p = 0; p < copies[e]; p++) {
            const int32_t r = (r0 + p) % R;
            copy_rank[(size_t)e * P + p] = r;
            copy_local[(size_t)e * P + p] = per_rank[r]++;
            if (r == 0) self[e] = p;
        }
    }
    std::vector<int32_t> ids(n);
    for (auto &v : ids) v = I(-1, E + c.Z - 1);
    const int64_t row_bytes = (int64_t)c.H * c.esize;
    std::vector<uint8_t> x((size_t)(c.T * row_bytes));
    for (auto &b : x) b = (uint8_t)I(0, 255);

    /* host loop: dest, the plan of dest, then the pack */
    auto owner = [&](int32_t e, int64_t tok, int32_t *rank, int32_t *local) {
        int32_t p = self[e] >= 0 ? self[e] : (int32_t)(tok % copies[e]);
        *rank = copy_rank[(size_t)e * P + p];
        *local = copy_local[(size_t)e * P + p];
    };
    std::vector<int32_t> want_dest(n, -1);
    for (int64_t s = 0; s < n; s++)
        if (ids[s] >= 0 && ids[s] < E) {
            int32_t r, l;
            owner(ids[s], s / c.K, &r, &l);
            want_dest[s] = r;
        }
    const dmref::Plan dp = dmref::plan(R, c.T, c.K, want_dest);
    const int64_t rows = c.capacity > 0 ? (int64_t)R * c.capacity : (int64_t)dp.offsets[R];
    std::vector<int32_t> want_ids = ids, want_index(n, -1), want_send_ids(rows, -1);
    std::vector<uint8_t> want_rows((size_t)(rows * row_bytes), 0xff);
    std::vector<long long> want_counters(4, 0);
    for (int64_t s = 0; s < n; s++) {
        const int32_t d = want_dest[s], id = ids[s];
        int32_t p = -1;
        if (d >= 0) {
            const int32_t pos = dp.slot_rows[s] - dp.offsets[d];
            if (c.capacity > 0 && pos >= c.capacity) {
                want_ids[s] = -1;
                want_counters[1]++;
            } else {
                p = c.capacity > 0 ? d * c.capacity + pos : dp.offsets[d] + pos;
                int32_t r, l;
                owner(id, s / c.K, &r, &l);
                want_send_ids[p] = l;
                want_counters[0]++;
                memcpy(&want_rows[(size_t)(p * row_bytes)], &x[(size_t)(s / c.K * row_bytes)], (size_t)row_bytes);
            }
        } else if (id == -1) {
            want_counters[2]++;
        } else if (id >= E && id < E + c.Z) {
            want_counters[3]++;
        }
        want_index[s] = p;
    }

    /* device */
    dm_ep_dev_tables tab{upload(copies), upload(copy_rank), upload(copy_local), upload(self), P};
    int32_t *dids = upload(ids), *ddest = upload(std::vector<int32_t>(n, -7));
    int bad = 0;
    if (dm_ep_cuda_dest(dids, n, c.K, E, tab, ddest, nullptr) != 0) bad++;
    if (download(ddest, n) != want_dest) {
        printf("  dest differs\n");
        bad++;
    }
    int32_t *doff = upload(dp.offsets), *dslot_rows = upload(dp.slot_rows);
    int32_t *dindex = upload(std::vector<int32_t>(n, -7)), *dsend_ids = upload(std::vector<int32_t>(rows + 1, -1));
    uint8_t *dx = upload(x), *drows = (uint8_t *)emu::dalloc((size_t)(rows * row_bytes) + 1);
    long long *dcounters = upload(std::vector<long long>(4, 0));
    dm_ep_pack_args a{n, c.K, E, c.Z, c.capacity, tab, dids, ddest, doff, dslot_rows, dindex, dsend_ids,
                      (char *)drows, (const char *)dx, (int32_t)row_bytes, dcounters};
    if (dm_ep_cuda_pack(&a, nullptr) != 0) bad++;
    emu::check_slack();
    bool rows_ok = true;
    for (int64_t p = 0; p < rows; p++) /* rows no slot landed on are unspecified */
        if (want_send_ids[p] >= 0 && memcmp(drows + p * row_bytes, &want_rows[(size_t)(p * row_bytes)], (size_t)row_bytes))
            rows_ok = false;
    std::vector<int32_t> got_send_ids = download(dsend_ids, rows);
    for (int64_t p = 0; p < rows; p++)
        if (want_send_ids[p] >= 0 && got_send_ids[p] != want_send_ids[p]) rows_ok = false;
    if (!rows_ok || download(dindex, n) != want_index || download(dids, n) != want_ids ||
        download(dcounters, 4) != want_counters) {
        printf("  pack differs: rows/send_ids %s, send_index %s, ids %s, counters %s\n", rows_ok ? "ok" : "WRONG",
               download(dindex, n) == want_index ? "ok" : "WRONG", download(dids, n) == want_ids ? "ok" : "WRONG",
               download(dcounters, 4) == want_counters ? "ok" : "WRONG");
        bad++;
    }
    float *dfill = upload(std::vector<float>(n + 3, -1.0f));
    if (dm_ep_cuda_fill(dfill, n, 1.0f, nullptr) != 0) bad++;
    for (int64_t i = 0; i < n + 3; i++)
        if (dfill[i] != (i < n ? 1.0f : -1.0f)) {
            printf("  fill differs at %lld\n", (long long)i);
            bad++;
            break;
        }
    return bad + emu::launch_errors;
}

} // namespace

int main() {
    /* E Z R P K H esize capacity T */
    const Case cases[] = {
        {16, 0, 4, 1, 4, 64, 2, 0, 37},    {16, 2, 4, 2, 8, 67, 2, 0, 50},   {9, 0, 3, 3, 2, 67, 4, 0, 23},
        {16, 0, 4, 2, 4, 64, 2, 6, 40},    {32, 1, 8, 2, 6, 4, 4, 3, 77},    {5, 0, 2, 1, 1, 8, 2, 0, 1},
        {64, 0, 8, 1, 8, 2048, 2, 40, 96}, {12, 0, 3, 2, 3, 12, 2, 0, 29}, {12, 1, 3, 1, 2, 6, 4, 5, 31},
    };
    int bad = 0, i = 0;
    for (const Case &c : cases) {
        const int b = run(c, 1000 + (uint64_t)i);
        printf("%-4s E %3d Z %d ranks %d copies <= %d K %d row %5d bytes %s T %3lld\n", b ? "FAIL" : "ok", c.E, c.Z,
               c.R, c.P, c.K, c.H * c.esize, c.capacity ? "capacity" : "exact   ", (long long)c.T);
        bad += b != 0;
        i++;
    }
    printf("ep kernels emulation: %d of %d cases failed\n", bad, i);
    return bad != 0;
}
