"""The search policy, model-free: G-Boost's MCTS (gboost.py), the baselines (baselines.py), the
final choice (final.py), answer extraction (answer.py), the tree (tree.py) and every constant
(config.py). ``api.solve`` runs one request; steps and scores come from a StepExecutor
(protocol.py), which engine/collab implements on the models. Nothing here imports torch."""
