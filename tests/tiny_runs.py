"""Command-line overrides for tiny training runs, shared by the tests that train through the CLI."""

#: a token model small enough to train a few steps in seconds (any experiment's model section)
TINY_TOKEN_MODEL = [
    "--model.init_args.d_model=32",
    "--model.init_args.encoder_layers=1",
    "--model.init_args.decoder_layers=1",
    "--model.init_args.mlp_dim=64",
]

#: that model on 8 training and 2 validation samples, quietly: no pictures, loggers or sanity check
TINY_RUN = [
    *TINY_TOKEN_MODEL,
    "--model.init_args.num_vis=0",
    "--data.init_args.limit_train=8",
    "--data.init_args.limit_val=2",
    "--data.init_args.batch_size=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.logger=false",
    "--trainer.num_sanity_val_steps=0",
]
