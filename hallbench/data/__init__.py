"""Data formats (COCO, POPE, LLaVA conversations, seed-001 VQA, synonym tables) and the shapes world."""
