"""hallbench: train hallucination-mitigating VLMs, evaluate them on POPE/CHAIR/VQA, and regenerate the paper's tables."""

__version__ = "0.1.0"
