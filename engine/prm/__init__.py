"""Process reward models: everything that turns a node's steps into a reward, in one place.

  scorer.py        PRMSpec, PRMPrompts (model-free token sequences) and PRMScorer, for the kinds a
                   PRM model scores itself: judge, token_pair, two_class
  heads.py         the two_class model: a decoder with a 2-way `score` head, built from a checkpoint
  value_head.py    a trained step-value head (`gboost train-prm`): its file format and fingerprint
  value_scorer.py  ValueHeadScorer, the `value_head` kind, on a resident model's rows

A new PRM kind: its name in engine/search/config.PRM_KINDS, and its scoring here -- a branch of
PRMPrompts/PRMScorer (scorer.py) for a kind read off a PRM model's logits, or a scorer file of its
own beside value_scorer.py (chosen in engine/stack.py) for one that is not.
"""
