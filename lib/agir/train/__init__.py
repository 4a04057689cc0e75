"""Train stage: Lightning module and data module over `dataset/`, writing the self-describing `model/best.pth`.

Entry point: `agir.train.stage.run_train_stage(cfg, run)`.
"""
