"""dynmoe inside serving frameworks.

    dynmoe.integrations.vllm          a vllm.general_plugins entry point (opt-in: DYNMOE_VLLM=1)
                                      whose unquantized FusedMoE method runs dynmoe's experts
    dynmoe.integrations.transformers  register(): experts_implementation="dynmoe";
                                      patch(model): dynmoe also routes

Each keeps the framework's own kernel for what dynmoe cannot express and says
why (vLLM: logged once per layer; transformers: a clear error). What dynmoe
expresses is one table, dynmoe.integrations.support.
"""
