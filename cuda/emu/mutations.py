#!/usr/bin/env python3
"""mutations.py BUILD_DIR [NAME...] — plants each bug below in a kernel source, rebuilds that
emulated test in BUILD_DIR (a configured build of the project or of cuda/emu), runs it, records
whether it fails, and restores the source. Prints a Markdown table (docs/cuda.md keeps the last
one). A bug the tests do not catch is a gap to close; a pattern that no longer matches the source
is reported as stale (update it with the kernel).

Not part of ctest: each mutant is a rebuild (~10-30 s on 2 cores)."""
import os
import subprocess
import sys

E, C, P = 'cuda/experts.cu', 'cuda/combine.cu', 'csrc/ep/ep_kernels.cu'
# name, file, test, what is planted, text, replacement
MUTANTS = [
    ('wait count', E, 'experts', 'cp.async.wait_group 3 instead of 2 in the k loop',
     'dm_cp_async_wait<DM_STAGES - 2>();', 'dm_cp_async_wait<DM_STAGES - 1>();'),
    ('A registers', E, 'experts', 'A fragment registers a0/a1 swapped at the ldmatrix',
     'af[mt][0], af[mt][1],\n', 'af[mt][1], af[mt][0],\n'),
    ('B chunk', E, 'experts', "B ldmatrix lanes read the other k chunk ((lane/8)%2 flipped)",
     'dm_swz(wn * 32 + (lane & 7) + ((lane >> 4) << 3), (lane >> 3) & 1)',
     'dm_swz(wn * 32 + (lane & 7) + ((lane >> 4) << 3), ((lane >> 3) & 1) ^ 1)'),
    ('top barrier', E, 'experts', '__syncthreads at the top of the k loop removed',
     '            __syncthreads(); /* k-tile kt landed', '            /* k-tile kt landed'),
    ('tile barrier', E, 'experts', '__syncthreads between the k loop and the next prologue removed',
     '        __syncthreads();\n        const dm_tile done = t;', '        const dm_tile done = t;'),
    ('epilogue rows', E, 'experts', 'epilogue row map g + 8*half -> 2g + half',
     'mt * 16 + g + half * 8;', 'mt * 16 + 2 * g + half;'),
    ('epilogue tile', E, 'experts', "epilogue stores at the next tile's coordinates",
     'dm_epilogue<T, MODE>(p, acc, done, wm, wn, lane);', '(void)done;\n        dm_epilogue<T, MODE>(p, acc, t, wm, wn, lane);'),
    ('swizzle (loader)', E, 'experts', 'loader writes unswizzled chunks, ldmatrix reads swizzled',
     'const uint32_t ld_off = dm_swz(ld_row, ld_chunk);', 'const uint32_t ld_off = ld_row * DM_BK * 2 + (ld_chunk << 4);'),
    ('K tail (scalar)', E, 'experts', 'scalar loader keeps element K (k + 2i <= K)',
     'uint32_t lo = k + 2 * i < K ?', 'uint32_t lo = k + 2 * i <= K ?'),
    ('K tail (vector)', E, 'experts', 'vector loader copies the chunk past K instead of zero-filling',
     'const bool in = k < K;\n        dm_cp_async16_zfill(dst, in ? row + k : row, in ? 16u : 0u);',
     'dm_cp_async16_zfill(dst, row + k, 16u);'),
    ('row mask', E, 'experts', 'epilogue stores row m == rows (one row past the expert)',
     'if (m >= t.rows) continue;', 'if (m > t.rows) continue;'),
    ('column mask', E, 'experts', 'single store of column n (one past the matrix: the next row)',
     'if (col < n) row[col] = h0;', 'if (col <= n) row[col] = h0;'),
    ('pair mask', E, 'experts', 'pair store when col + 1 == n (equivalent: only n odd with an even row '
     'stride, i.e. rows_h padding)', 'if (col + 1 < n && even_ld) {', 'if (col < n && even_ld) {'),
    ('16-row steps', E, 'experts', "a tail's partial 16-row MMA step skipped (rows / 16, not ceil)",
     '(wrows + 15) >> 4', 'wrows >> 4'),
    ('A row gather', E, 'experts', 'GEMM 1 gathers x rows by plan row, not by token',
     'if (MODE == 0) src = p.sorted_slots[src] / p.slots;\n            a_row[i]', 'if (MODE == 0) src = p.sorted_slots[src];\n            a_row[i]'),
    ('decode row mask', E, 'experts', 'decode: stores one plan row past the chunk (i <= nr)',
     'if (i < nr && col < p.n) orow[col]', 'if (i <= nr && col < p.n) orow[col]'),
    ('decode reduce', E, 'experts', 'decode: transpose-reduce lanes swapped (send the kept half)',
     'const float send = __uint_as_float((lo & up) | (hi & ~up));',
     'const float send = __uint_as_float((hi & up) | (lo & ~up));'),
    # issue 15: activations, layouts, biases, weight on the input
    ('gate/up swap', E, 'experts', 'interleaved (and blocked) gate and up rows swapped in dm_w13_row',
     'return up ? dm_up_row((dynmoe_gate_up)p.gate_up, p.n, j) : dm_gate_row((dynmoe_gate_up)p.gate_up, p.n, j);',
     'return up ? dm_gate_row((dynmoe_gate_up)p.gate_up, p.n, j) : dm_up_row((dynmoe_gate_up)p.gate_up, p.n, j);'),
    ('bias skipped (prefill)', E, 'experts', 'prefill epilogue adds no bias (b13 and b2)',
     'bb[j][c] = col < p.n ? dm_bias<T>', 'bb[j][c] = 0 ? dm_bias<T>'),
    ('b2 row (prefill)', E, 'experts', 'prefill GEMM2 reads b2 at the column of the other half',
     'MODE == 0 ? dm_w13_row(p, col, j >= 4) : (long long)col) : 0.0f;',
     'MODE == 0 ? dm_w13_row(p, col, j >= 4) : (long long)(col ^ 64) % p.n) : 0.0f;'),
    ('bias gate/up (decode)', E, 'experts', "decode: gate lanes add the up row's bias",
     'dm_w13_row(p, col, lw >= 2) : (long long)col) : 0.0f;', 'dm_w13_row(p, col, lw < 2) : (long long)col) : 0.0f;'),
    ('weight before bias', E, 'experts', 'prefill: weight_on_input scales bias too ((acc + b) w)',
     'float v0 = acc[mt][j][half * 2] * rw + bb[j][0],', 'float v0 = (acc[mt][j][half * 2] + bb[j][0]) * rw,'),
    ('weight twice', C, 'combine', 'weight_on_input: combine weights the real rows again',
     'w[k] = kd == DM_SLOT_ROW && on_input ? 1.0f : weights[slot];', 'w[k] = weights[slot];'),
    ('weight twice (experts)', C, 'experts', 'weight_on_input: combine weights the real rows again (experts test)',
     'w[k] = kd == DM_SLOT_ROW && on_input ? 1.0f : weights[slot];', 'w[k] = weights[slot];'),
    ('zero expert weight', C, 'experts', 'weight_on_input: identity zero experts add x unweighted',
     'w[k] = kd == DM_SLOT_ROW && on_input ? 1.0f : weights[slot];', 'w[k] = on_input ? 1.0f : weights[slot];'),
    ('decode weight', E, 'experts', 'decode: weight_on_input weight of the chunk\'s first row for all rows',
     'dm_row_weight(p, row0 + c0 + i)', 'dm_row_weight(p, row0 + c0)'),
    ('non-gated B rows', E, 'experts', 'prefill: RELU2 / SILU B tile rows mapped as gate/up pairs',
     '        const bool paired = MODE == 0 && p.paired;\n        const int j = dm_b_col(',
     '        const bool paired = MODE == 0;\n        const int j = dm_b_col('),
    ('weight before bias (gated)', E, 'experts', 'prefill: weight_on_input scales the gate bias too',
     'DM_ACT(gate[0] * rw + bb[nt][0], up[0] * rw + bb[4 + nt][0])',
     'DM_ACT((gate[0] + bb[nt][0]) * rw, up[0] * rw + bb[4 + nt][0])'),
    ('decode weight before bias', E, 'experts', 'decode: weight_on_input scales the bias too',
     'const float v = acc[0] * rw + bias;', 'const float v = (acc[0] + bias) * rw;'),
    ('limit', E, 'experts', 'SWIGLU_OAI limit not passed (7 instead of the layer\'s)',
     'p1.limit = ex->limit;', 'p1.limit = 7.0f;'),
    ('alpha', E, 'experts', "SWIGLU_OAI alpha not passed (gpt-oss's 1.702 instead of the layer's)",
     'p1.alpha = ex->alpha;', 'p1.alpha = 1.702f;'),
    ('non-gated act (decode)', E, 'experts', 'decode: RELU2 / SILU store h without the activation',
     'orow[col] = T::from_f32(MODE == 0 ? dm_act1(p, v, 0.0f) : v);', 'orow[col] = T::from_f32(v);'),
    # issue 16: FP8_BLOCK in the decode (streaming) kernel
    ('fp8 scale block', E, 'experts', 'fp8 vector loop: scale of k / 64 instead of k / 128',
     'sc[w] = ws[w][(v * 16) / DM_FP8_BLOCK];', 'sc[w] = ws[w][(v * 16) / 64];'),
    ('fp8 scale row', E, 'experts', 'fp8: scale row block of wrow / 256 instead of / 128',
     '(wrow / DM_FP8_BLOCK) * p.scale_kg', '(wrow / 256) * p.scale_kg'),
    ('fp8 pair order', E, 'experts', 'decode fp8 vector step: the two byte pairs of a word swapped',
     '? words[b >> 2] >> (8 * (b & 3))', '? words[b >> 2] >> (8 * (2 - (b & 3)))'),
    ('fp8 scalar scale', E, 'experts', "fp8 scalar loop: every k takes the row's first scale",
     'dm_fp8e4m3_to_f32(wq[w][k]) * ws[w][k / DM_FP8_BLOCK];', 'dm_fp8e4m3_to_f32(wq[w][k]) * ws[w][0];'),
    # issue 16: MXFP4 and INT4 in the decode (streaming) kernel
    ('byte order (nibbles)', E, 'experts', 'decode mxfp4 vector step: bytes of a half-word swapped',
     ': words[b >> 3] >> (4 * (b & 7));', ': words[b >> 3] >> (4 * ((b & 7) ^ 2));'),
    ('decode fold', E, 'experts', 'decode fp8/mxfp4 vector step: the fold (2^8, 2^14) missing from the scale',
     's8[w] = s[w] * dm_q_fold<Q>()', 's8[w] = s[w]'),
    ('decode fold guard', E, 'experts', 'decode vector step: the fold taken whatever the scale',
     'fold = fold && dm_fold_ok(s[w]);', '(void)fold;'),
    ('decode zero point (pairs)', E, 'experts', 'decode int4 vector step: zero point 8 in the pair decode',
     '? (0x6400u + (uint32_t)z[w]) * 0x10001u : 0u;', '? (0x6400u + 8u) * 0x10001u : 0u;'),
    ('nibble order (scalar)', E, 'experts', 'int4 scalar loop: nibble of k ^ 1 (pair swapped)',
     'const uint32_t q = dm_nibble(wq[w], k);', 'const uint32_t q = dm_nibble(wq[w], k ^ 1);'),
    ('mxfp4 scale group', E, 'experts', 'mxfp4 vector loop: scale of k / 64 instead of k / 32',
     'Q == 2 ? v : (v * 32) / p.group;', 'Q == 2 ? v / 2 : (v * 32) / p.group;'),
    ('int4 scale group', E, 'experts', 'int4 vector loop: group of k / 128 whatever group_size',
     'Q == 2 ? v : (v * 32) / p.group;', 'Q == 2 ? v : (v * 32) / 128;'),
    ('int4 scale group (scalar)', E, 'experts', 'mxfp4/int4 scalar loop: group of k / 128 whatever group_size',
     'const int g = k / p.group;', 'const int g = k / 128;'),
    ('int4 scale row', E, 'experts', "mxfp4/int4: a row's scales start at the previous row's (wrow - 1, clamped)",
     'si[w] = (long long)e * p.scale_expert + wrow * p.scale_kg;',
     'si[w] = (long long)e * p.scale_expert + (wrow > 0 ? wrow - 1 : 0) * p.scale_kg;'),
    ('zero point ignored', E, 'experts', 'int4 vector loop: zero point 8 even when zeros are given',
     'zp[w] = Q == 3 ? dm_nib_zero(p, si[w] + g) : 0.0f;', 'zp[w] = Q == 3 ? 8.0f : 0.0f;'),
    ('zero point ignored (scalar)', E, 'experts', 'int4 scalar loop: zero point 8 even when zeros are given',
     '((float)q - dm_nib_zero(p, si[w] + g)) * s', '((float)q - 8.0f) * s'),
    ('zero point not passed', E, 'experts', 'w13 zero points not passed to GEMM 1 (NULL: 8)',
     'p1.b_zero = (const uint8_t *)ex->w13_zero;', 'p1.b_zero = NULL;'),
    ('int4 vector K', E, 'experts', 'int4 vector loop taken when K % 16 == 0 (K / 32 vectors: the tail skipped)',
     'p2.vec_b = I % 32 == 0 && dm_aligned16(ex->w2);', 'p2.vec_b = I % 16 == 0 && dm_aligned16(ex->w2);'),
    # issue 16, item 3: quantized B tiles dequantized in shared memory in the prefill kernel
    ('qpf scale block', E, 'experts', "prefill fp8: a B row's scale block of wrow / 64 instead of / 128",
     '(Q == DYNMOE_WEIGHTS_FP8_BLOCK ? wrow / DM_FP8_BLOCK : wrow) * p.scale_kg',
     '(Q == DYNMOE_WEIGHTS_FP8_BLOCK ? wrow / 64 : wrow) * p.scale_kg'),
    ('qpf scale K block', E, 'experts', "prefill fp8: the k-tile's scale block of k / 64 instead of k / 128",
     's = ((const float *)p.b_scale)[si + k0 / DM_FP8_BLOCK];', 's = ((const float *)p.b_scale)[si + k0 / 64];'),
    ('qpf fp8 K offset', E, 'experts', "prefill fp8: the tile's K offset into the scale array dropped (block 0)",
     's = ((const float *)p.b_scale)[si + k0 / DM_FP8_BLOCK];', 's = ((const float *)p.b_scale)[si];'),
    ('qpf nib K offset', E, 'experts', "prefill mxfp4/int4: the tile's K offset into the scale array dropped",
     'const long long g = si + k0 / p.group;', 'const long long g = si;'),
    ('qpf int4 group', E, 'experts', 'prefill int4: group of k / 128 whatever group_size',
     'const long long g = si + k0 / p.group;', 'const long long g = si + k0 / 128;'),
    ('qpf nibble order', E, 'experts', 'prefill mxfp4/int4: the two nibbles of a byte swapped (high first)',
     '(words[v >> 3] >> (4 * (v & 7)))', '(words[v >> 3] >> (4 * ((v & 7) ^ 1)))'),
    ('qpf fp8 byte order', E, 'experts', 'prefill fp8: bytes of a word taken high first',
     '(uint8_t)(words[v >> 2] >> (8 * (v & 3)))', '(uint8_t)(words[v >> 2] >> (8 * (3 - (v & 3))))'),
    ('qpf zero point ignored', E, 'experts', 'prefill int4: zero point 8 even when zeros are given',
     'if (Q == DYNMOE_WEIGHTS_INT4) z = dm_nib_zero(p, g);', 'if (Q == DYNMOE_WEIGHTS_INT4) z = 8.0f;'),
    ('qpf pad nibble', E, 'experts', "prefill int4: an odd K's pad nibble kept (k + 1 <= K; equivalent: A is 0 "
     "past K, so a finite pad value adds 0, and a non-finite scale makes its row non-finite anyway)",
     'k0 + v + 1 < K ? dm_raw_value', 'k0 + v + 1 <= K ? dm_raw_value'),
    ('qpf raw tail', E, 'experts', 'prefill: scalar raw loader reads one byte past the row (<= nbytes)',
     'if (b + 4 * i + j < nbytes)', 'if (b + 4 * i + j <= nbytes)'),
    ('qpf dequant race', E, 'experts', "prefill: the dequantized tile written before the previous k-tile's mma "
     'finished (dequant above the top barrier)',
     '            __syncthreads(); /* k-tile kt landed for all; everyone is done with stage (kt-1) % STAGES */\n'
     '            /* Quantized B: every warp is done with the previous k-tile\'s mma (the barrier above), so the\n'
     '             * one dequantized tile may be rewritten, from this thread\'s own raw row (landed at its wait);\n'
     '             * the barrier after the loads publishes it. */\n'
     '            if (Q != 0) dm_dequant_row<T, Q>(p, sb, raw, tid, q_si, kt, p.k);\n',
     '            if (Q != 0) dm_dequant_row<T, Q>(p, sb, raw, tid, q_si, kt, p.k);\n'
     '            __syncthreads(); /* k-tile kt landed for all; everyone is done with stage (kt-1) % STAGES */\n'),
    ('qpf publish barrier', E, 'experts', 'prefill: the barrier publishing the dequantized tile removed',
     '            if (Q != 0) __syncthreads(); /* dequantized tile complete */\n', ''),
    # issue 16: the prefill dequantization's full-tile path and pair decoders
    ('pair fp8 NaN rule', E, 'experts', 'fp8 pair decoder (both kernels): the NaN codes S.1111.111 not mapped to NaN (1.875 * 2^8)',
     'return (m >> 1) | (w & 0x80008000u) | (((m + 0x01000100u) & 0x80008000u) >> 1);',
     'return (m >> 1) | (w & 0x80008000u);'),
    ('qpf fp8 fold', E, 'experts', 'prefill fp8 full tile: the 2^8 fold missing from the scale',
     'return Q == DYNMOE_WEIGHTS_FP8_BLOCK ? DM_FP8_FOLD :', 'return Q == DYNMOE_WEIGHTS_FP8_BLOCK ? 1.0f :'),
    ('qpf e2m1 fold', E, 'experts', 'prefill mxfp4 full tile: the 2^14 fold missing from the scale',
     ': Q == DYNMOE_WEIGHTS_MXFP4 ? DM_E2M1_FOLD : 1.0f;', ': Q == DYNMOE_WEIGHTS_MXFP4 ? 1.0f : 1.0f;'),
    ('pair fp8 sign', E, 'experts', 'fp8 pair decoder (both kernels): the sign bits lost',
     'return (m >> 1) | (w & 0x80008000u) | (((m', 'return (m >> 1) | (((m'),
    ('pair e2m1 sign', E, 'experts', 'e2m1 pair decoder (both kernels): the sign bits lost',
     'return ((w & 0x70007000u) >> 3) | (w & 0x80008000u);', 'return ((w & 0x70007000u) >> 3);'),
    ('pair e2m1 nibble order', E, 'experts', 'e2m1 pair decoder (both kernels): the two nibbles of a byte swapped (high first)',
     'const uint32_t w = ((x & 0xfu) << 12) | ((x & 0xf0u) << 24);',
     'const uint32_t w = ((x & 0xf0u) << 8) | ((x & 0xfu) << 28);'),
    ('pair u4 nibble order', E, 'experts', 'int4 pair decoder (prefill full tile): the two nibbles of a byte swapped (high first)',
     'return (x & 0xfu) | ((x & 0xf0u) << 12) | 0x64006400u;', 'return ((x & 0xf0u) >> 4) | ((x & 0xfu) << 16) | 0x64006400u;'),
    ('qpf fp8 pair order', E, 'experts', 'prefill fp8 full tile: the two byte pairs of a word swapped',
     '? words[v >> 2] >> (8 * (v & 3))', '? words[v >> 2] >> (8 * (2 - (v & 3)))'),
    ('qpf full-tile zero point', E, 'experts', 'prefill int4 full tile: zero point 8 even when zeros are given',
     'zb = z + DM_U4_BIAS;', 'zb = 8.0f + DM_U4_BIAS;'),
    ('qpf partial tile fast', E, 'experts', 'prefill: the full-tile path taken for a partial last k-tile (k0 < K; '
     'equivalent: the bytes past the row are zero-filled and decode to finite values that meet A = 0 past K)',
     'if (k0 + DM_BK <= K && dm_fold_ok(s)) {', 'if (k0 < K && dm_fold_ok(s)) {'),
    ('fold guard', E, 'experts', 'dm_fold_ok true for every scale (both kernels) (finite scales from 2^100 up overflow '
     'to inf once folded)', 'return !(fabsf(s) >= 0x1p100f && fabsf(s) <= 3.40282347e38f);', 'return true;'),
    # issue 16: the INT4 decode step's word spread (dm_u4x8_to_f16x2)
    ('decode u4 lanes', E, 'experts', 'decode int4 vector step: the two lanes of a spread pair swapped (values j and j + 4)',
     'wf[w][u] = (n < 4 ? f.x : f.y) * s8[w];', 'wf[w][u] = (n < 4 ? f.y : f.x) * s8[w];'),
    ('decode u4 nibble order', E, 'experts', 'int4 word spread: the two nibbles of each byte swapped (shift 4 (j ^ 1))',
     'return ((w >> (4 * j)) & 0x000f000fu) | 0x64006400u;', 'return ((w >> (4 * (j ^ 1))) & 0x000f000fu) | 0x64006400u;'),
    ('decode u4 bias', E, 'experts', 'int4 word spread: exponent of 512 instead of 1024 (0x6000: q / 2 + 512)',
     'return ((w >> (4 * j)) & 0x000f000fu) | 0x64006400u;', 'return ((w >> (4 * j)) & 0x000f000fu) | 0x60006000u;'),
    ('decode u4 zero', E, 'experts', 'decode int4 vector step: the zero point dropped from the fp16 pair (q * s)',
     '? (0x6400u + (uint32_t)z[w]) * 0x10001u : 0u;', '? 0x64006400u : 0u;'),
    ('decode u4 zero lane', E, 'experts', "decode int4 vector step: the fp16 zero pair's high lane 1024 (values j + 4 lose z)",
     '? (0x6400u + (uint32_t)z[w]) * 0x10001u : 0u;', '? 0x64000000u + (0x6400u + (uint32_t)z[w]) : 0u;'),
    ('decode u4 sub order', E, 'experts', 'decode int4 vector step: z - q instead of q - z (sign of every weight)',
     'dm_sub_f16x2(dm_u4x8_to_f16x2(words[b >> 3], n & 3), zh[w])', 'dm_sub_f16x2(zh[w], dm_u4x8_to_f16x2(words[b >> 3], n & 3))'),
    ('sub.f16x2 operands', 'cuda/emu/ptx_emu.h', 'ptx', 'sub.f16x2 emulation: b - a instead of a - b',
     'd |= (uint32_t)__half_as_ushort(__float2half_rn(x - y)) << (16 * i);',
     'd |= (uint32_t)__half_as_ushort(__float2half_rn(y - x)) << (16 * i);'),
    ('sub.f16x2 rounding', 'cuda/emu/ptx_emu.h', 'ptx', 'sub.f16x2 emulation: truncated toward zero, not to nearest even',
     'd |= (uint32_t)__half_as_ushort(__float2half_rn(x - y)) << (16 * i);',
     'd |= (uint32_t)(__half_as_ushort(__float2half_rn(x - y)) - (fabsf(__half2float(__float2half_rn(x - y))) > fabsf(x - y))) << (16 * i);'),
    # issue 16: the sm_89+ FP8 pair cvt (cvt.rn.f16x2.e4m3x2), its emulation and the sm_89 paths
    ('cvt e4m3x2 byte order', E, 'experts_sm89', 'sm_89 fp8 pair decode: the two bytes swapped before the cvt',
     'uint32_t dm_fp8x2_to_f16x2(uint32_t x) { return dm_cvt_e4m3x2_f16x2(x); }',
     'uint32_t dm_fp8x2_to_f16x2(uint32_t x) { return dm_cvt_e4m3x2_f16x2(((x & 0xffu) << 8) | ((x >> 8) & 0xffu)); }'),
    ('cvt e4m3x2 emu order', 'cuda/emu/ptx_emu.h', 'ptx', 'cvt.f16x2.e4m3x2 emulation: the upper byte to the lower half',
     'return (uint32_t)dm_emu_e4m3_to_f16(x & 0xffu) | ((uint32_t)dm_emu_e4m3_to_f16((x >> 8) & 0xffu) << 16);',
     'return (uint32_t)dm_emu_e4m3_to_f16((x >> 8) & 0xffu) | ((uint32_t)dm_emu_e4m3_to_f16(x & 0xffu) << 16);'),
    ('sm89 fp8 fold', E, 'experts_sm89', 'sm_89 fp8 path (both kernels): the fold left at 2^8 (the cvt gives the value itself)',
     '#define DM_FP8_FOLD 1.0f', '#define DM_FP8_FOLD 256.0f'),
    ('cvt e4m3x2 NaN (ptx)', 'cuda/emu/ptx_emu.h', 'ptx', 'cvt.f16x2.e4m3x2 emulation: S.1111.111 not NaN (480)',
     '    if (e == 0xfu && m == 7u) return (uint16_t)(sign | 0x7e00u);\n', ''),
    ('cvt e4m3x2 NaN (experts)', 'cuda/emu/ptx_emu.h', 'experts_sm89', 'cvt.f16x2.e4m3x2 emulation: S.1111.111 not NaN (480)',
     '    if (e == 0xfu && m == 7u) return (uint16_t)(sign | 0x7e00u);\n', ''),
    ('combine order', C, 'combine', 'combine vector unpack takes the high half first',
     'w[i >> 1] >> (16 * (i & 1))', 'w[i >> 1] >> (16 * ((i + 1) & 1))'),
    ('pack tail', P, 'ep', "EP pack drops a row's last piece",
     'for (int32_t i = lane * UNIT; i < bytes; i += 32 * UNIT)', 'for (int32_t i = lane * UNIT; i + UNIT < bytes; i += 32 * UNIT)'),
    ('pack width', P, 'ep', 'EP pack uses 16-byte copies on 8-byte-aligned rows',
     'if (align % 16 == 0) pack_kernel<16>', 'if (align % 8 == 0) pack_kernel<16>'),
]


def main():
    build = os.path.abspath(sys.argv[1])
    only = set(sys.argv[2:])
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
    rows = []
    for name, f, test, what, old, new in MUTANTS:
        if only and name not in only:
            continue
        path = os.path.join(root, f)
        src = open(path).read()
        if src.count(old) != 1:
            rows.append((name, what, f, 'STALE: pattern matches %d times' % src.count(old)))
            continue
        target = 'emu_' + test
        try:
            open(path, 'w').write(src.replace(old, new))
            b = subprocess.run(['cmake', '--build', build, '--target', target], capture_output=True, text=True)
            if b.returncode:
                rows.append((name, what, f, 'does not compile'))
                continue
            exe = [os.path.join(d, target) for d in (os.path.join(build, 'cuda', 'emu'), build)]
            exe = next(e for e in exe if os.path.exists(e))
            r = subprocess.run([exe], capture_output=True, text=True, timeout=900)
            lines = (r.stdout + r.stderr).splitlines()
            # a trap's line may follow buffered stdout on the same line
            trap = next((l[l.index('emu:'):] for l in lines if 'emu:' in l), None)
            fails = [l for l in lines if l.startswith('FAIL')]
            if r.returncode == 0:
                verdict = 'NOT CAUGHT'
            elif trap:
                verdict = 'caught: ' + trap.split(': ', 2)[-1][:110]
            elif any(l.startswith('FAIL') for l in fails):
                verdict = 'caught: %d failing case(s)' % len([l for l in fails if l.startswith('FAIL')])
            else:
                verdict = 'caught: ' + (lines[-1] if lines else 'exit status %d' % r.returncode)[:110]
            rows.append((name, what, f, verdict))
        finally:
            open(path, 'w').write(src)
        print('%-18s %s' % (name, rows[-1][3]), file=sys.stderr, flush=True)
    subprocess.run(['cmake', '--build', build, '--target', 'emu_experts', 'emu_experts_sm89', 'emu_combine', 'emu_ep',
                    'emu_ptx'], capture_output=True)
    print('| planted bug | file | emulated tests |')
    print('|---|---|---|')
    for name, what, f, verdict in rows:
        print('| %s: %s | `%s` | %s |' % (name, what, f, verdict))
    return 1 if any(v.startswith('NOT') or v.startswith('STALE') for _, _, _, v in rows) else 0


sys.exit(main())
