/* The README's example: one MoE layer on the CPU backend. Built by CMake as
 * dynmoe-example, so the README's code always compiles. */
#include <stdio.h>
#include <stdlib.h>

#include "dynmoe.h"

int main(void) {
    enum { T = 4, E = 8, K = 2, H = 64, I = 32 };
    dynmoe_ctx *ctx;
    if (dynmoe_ctx_create(&ctx, DYNMOE_BACKEND_CPU, 0) != DYNMOE_OK) {
        fprintf(stderr, "dynmoe: %s\n", dynmoe_last_error());
        return 1;
    }
    dynmoe_router router = DYNMOE_ROUTER_INIT; /* softmax, top-K */
    router.num_experts = E;
    router.top_k = K;
    router.norm = DYNMOE_NORM_SELECTED; /* renormalise over the K picked */

    dynmoe_experts experts = DYNMOE_EXPERTS_INIT; /* f32, SwiGLU */
    experts.num_experts = E;
    experts.hidden = H;
    experts.inter = I;
    float *w13 = aligned_alloc(64, sizeof(float) * E * 2 * I * H); /* [E, 2I, H] */
    float *w2 = aligned_alloc(64, sizeof(float) * E * H * I);      /* [E, H, I]  */
    float *x = aligned_alloc(64, sizeof(float) * T * H), *out = aligned_alloc(64, sizeof(float) * T * H);
    float *logits = aligned_alloc(64, sizeof(float) * T * E);
    for (int i = 0; i < E * 2 * I * H; i++) w13[i] = (float)(i % 7) * 0.01f - 0.03f;
    for (int i = 0; i < E * H * I; i++) w2[i] = (float)(i % 5) * 0.01f - 0.02f;
    for (int i = 0; i < T * H; i++) x[i] = (float)(i % 11) * 0.1f - 0.5f;
    for (int i = 0; i < T * E; i++) logits[i] = (float)((i * 37) % 13) * 0.3f;
    experts.w13 = w13;
    experts.w2 = w2;

    size_t bytes = dynmoe_workspace_size(&router, &experts, T); /* the caller allocates */
    void *workspace = aligned_alloc(256, (bytes + 255) / 256 * 256);
    dynmoe_status st = dynmoe_moe_forward(ctx, &router, &experts, T, x, logits, DYNMOE_F32,
                                          NULL, NULL, out, workspace, bytes, NULL);
    if (st != DYNMOE_OK) {
        fprintf(stderr, "%s: %s\n", dynmoe_status_name(st), dynmoe_last_error());
        return 1;
    }
    printf("out[0][0..3] = %.5f %.5f %.5f %.5f\n", out[0], out[1], out[2], out[3]);
    free(w13), free(w2), free(x), free(out), free(logits), free(workspace);
    dynmoe_ctx_destroy(ctx);
    return 0;
}
