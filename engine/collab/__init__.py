"""Step execution: what runs models for one step of the search.

The search (engine/search) awaits the StepExecutor protocol; EngineExecutor (executor.py) is the
engine's. One file per concern: an action's step function (slm_step.py, fused_step.py,
delegated_step.py), the fusion math (fusion.py), the tokenizer-level step rules (rules.py), PRM
kinds live in engine/prm/. A new action is one step function plus its name in STEPS and in
engine/search/config.ACTIONS.
"""
