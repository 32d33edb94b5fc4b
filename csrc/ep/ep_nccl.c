/* ep/ep_nccl.c — placeholder, replaced below */
#include "ep.h"
dynmoe_status dm_ep_nccl_create(struct dynmoe_ep *ep, const void *nccl_comm, const dynmoe_ep_config *c) {
    (void)ep; (void)nccl_comm; (void)c;
    return dm_fail(DYNMOE_ERR_UNSUPPORTED, "dynmoe_ep_create_nccl: dynmoe was built without NCCL");
}
void dm_ep_nccl_destroy(struct dynmoe_ep *ep) { (void)ep; }
dynmoe_status dm_ep_nccl_forward(struct dynmoe_ep *ep, dynmoe_ctx *ctx, const dm_ep_fwd *f, void *stream) {
    (void)ep; (void)ctx; (void)f; (void)stream;
    return dm_fail(DYNMOE_ERR_UNSUPPORTED, "dynmoe_ep_moe_forward: dynmoe was built without NCCL");
}
