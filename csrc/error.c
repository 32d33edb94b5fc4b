/* error.c — status names, the thread-local message of the last failure, version. */
#include <stdio.h>

#include "backend.h"

static _Thread_local char last_error[512];

dynmoe_status dm_fail(dynmoe_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return status;
}

void dm_clear_error(void) { last_error[0] = '\0'; }

const char *dynmoe_last_error(void) { return last_error; }

const char *dynmoe_status_name(dynmoe_status status) {
    switch (status) {
    case DYNMOE_OK: return "DYNMOE_OK";
    case DYNMOE_ERR_INVALID_ARGUMENT: return "DYNMOE_ERR_INVALID_ARGUMENT";
    case DYNMOE_ERR_UNSUPPORTED: return "DYNMOE_ERR_UNSUPPORTED";
    case DYNMOE_ERR_WORKSPACE_TOO_SMALL: return "DYNMOE_ERR_WORKSPACE_TOO_SMALL";
    case DYNMOE_ERR_OUT_OF_MEMORY: return "DYNMOE_ERR_OUT_OF_MEMORY";
    case DYNMOE_ERR_DEVICE: return "DYNMOE_ERR_DEVICE";
    case DYNMOE_ERR_INTERNAL: return "DYNMOE_ERR_INTERNAL";
    default: return "unknown status";
    }
}

int dynmoe_version(void) { return DYNMOE_VERSION; }
