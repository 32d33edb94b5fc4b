/*
 * quant.cc — the reference's reading of the quantized weight formats
 * (include/dynmoe.h, dynmoe_weight_format), written from the OCP FP8 and MX
 * specifications in double arithmetic, independently of csrc/quant_rules.h.
 */
#include <cmath>
#include <limits>

#include "reference.h"

namespace dmref {

double fp8_e4m3(uint8_t q) {
    const double sign = (q & 0x80) ? -1.0 : 1.0;
    const int e = (q >> 3) & 15, m = q & 7;
    if (e == 15 && m == 7) return std::numeric_limits<double>::quiet_NaN();
    if (e == 0) return sign * std::ldexp((double)m / 8.0, -6); /* subnormal: 0.m * 2^(1-7) */
    return sign * std::ldexp(1.0 + m / 8.0, e - 7);
}

double e2m1(uint8_t nibble) {
    static const double mag[8] = {0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0}; /* OCP MX table */
    return (nibble & 8) ? -mag[nibble & 7] : mag[nibble & 7];
}

double ue8m0(uint8_t s) {
    return s == 255 ? std::numeric_limits<double>::quiet_NaN() : std::ldexp(1.0, (int)s - 127);
}

std::vector<double> dequantize(const QuantMatrix &m, int32_t E, int64_t N, int64_t K) {
    std::vector<double> w((size_t)(E * N * K));
    const int64_t row_bytes = m.format == DYNMOE_WEIGHTS_FP8_BLOCK ? K : (K + 1) / 2;
    const int64_t kb = m.format == DYNMOE_WEIGHTS_FP8_BLOCK ? (K + 127) / 128
                       : m.format == DYNMOE_WEIGHTS_MXFP4 ? K / 32
                                                          : (K + m.group - 1) / m.group;
    const int64_t nb = (N + 127) / 128;
    for (int32_t e = 0; e < E; e++)
        for (int64_t n = 0; n < N; n++)
            for (int64_t k = 0; k < K; k++) {
                const uint8_t *row = &m.q[(size_t)((e * N + n) * row_bytes)];
                const uint8_t nib = (uint8_t)((k % 2 == 0) ? row[k / 2] & 15 : row[k / 2] >> 4);
                double v = 0.0;
                if (m.format == DYNMOE_WEIGHTS_FP8_BLOCK) {
                    v = fp8_e4m3(row[k]) * m.scale_f32[(size_t)((e * nb + n / 128) * kb + k / 128)];
                } else if (m.format == DYNMOE_WEIGHTS_MXFP4) {
                    v = e2m1(nib) * ue8m0(m.scale_u8[(size_t)((e * N + n) * kb + k / 32)]);
                } else {
                    const size_t g = (size_t)((e * N + n) * kb + k / m.group);
                    const double zero = m.zero.empty() ? 8.0 : (double)m.zero[g];
                    v = ((double)nib - zero) * f16_to_f32(m.scale_f16[g]);
                }
                w[(size_t)((e * N + n) * K + k)] = v;
            }
    return w;
}

} // namespace dmref
