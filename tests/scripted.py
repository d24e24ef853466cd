"""A model backend that answers by a rule, for tests of everything around the model.

The engine, the scoring and the files are real; only the answers come from ``answer(sample)``
instead of a network, so that a test knows every answer and can compute the metrics by hand.
"""


class ScriptedBackend:
    def __init__(self, answer):
        self.answer = answer
        self.calls = 0
        """Samples answered so far (a resumed run asks none again)."""

    def describe(self):
        return {"backend": "scripted", "display_name": "Scripted"}

    def generate(self, samples, images, chunk_seed):
        self.calls += len(samples)
        return [self.answer(s) for s in samples]
