"""``dlrm train``: options -> a request -> a training run (here, or on N processes) -> a summary."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from dlrm_cli.cli import options as o
from dlrm_cli.cli.options import SYNTHETIC as S
from dlrm_cli.cli.options import TRAIN as T
from dlrm_cli.config import DEFAULT_STORE, DEFAULT_VALIDATION

if TYPE_CHECKING:
    from dlrm_cli.training.request import TrainRequest

EXAMPLE = "Example: dlrm train --epochs 10 --batch-size 256 --name first-run"


def train_command(
    ctx: typer.Context,
    epochs: o.Epochs = T.epochs,
    batch_size: o.BatchSize = T.batch_size,
    lr: o.Lr = T.lr,
    lr_schedule: o.LrScheduleOption = o.LrScheduleChoice(T.lr_schedule),
    lr_step: o.LrStep = T.lr_step,
    lr_gamma: o.LrGamma = T.lr_gamma,
    weight_decay: o.WeightDecay = T.weight_decay,
    embedding_dim: o.EmbeddingDim = T.embedding_dim,
    embeddings: o.EmbeddingsOption = o.Embeddings(T.embeddings),
    sparse_optimizer: o.SparseOptimizerOption = o.SparseOptimizer(T.sparse_optimizer),
    sparse_lr: o.SparseLr = T.sparse_lr,
    embedding_l2: o.EmbeddingL2 = T.embedding_l2,
    threads: o.ThreadsOption = T.threads,
    seed: o.Seed = T.seed,
    name: o.Name = None,
    data: o.Data = o.DATA_DEFAULT,
    split: o.Split = None,
    split_seed: o.SplitSeed = None,
    val_fraction: o.ValFraction = DEFAULT_VALIDATION,
    time_features: o.TimeFeatures = None,
    user_col: o.UserCol = None,
    item_col: o.ItemCol = None,
    rating_col: o.RatingCol = None,
    dense_cols: o.DenseCols = None,
    sparse_cols: o.SparseCols = None,
    time_col: o.TimeCol = None,
    title_col: o.TitleCol = None,
    rating_range: o.RatingRange = None,
    users: o.Users = S.users,
    items: o.Items = S.items,
    ratings: o.Ratings = S.ratings,
    noise: o.Noise = S.noise,
    bottom_mlp: o.BottomMlp = o.comma_joined(T.bottom_mlp),
    top_mlp: o.TopMlp = o.comma_joined(T.top_mlp),
    dropout: o.Dropout = T.dropout,
    ensemble: o.Ensemble = T.ensemble,
    bags: o.Bags = T.bags,
    bag_cap: o.BagCap = T.bag_cap,
    heavy_bags: o.HeavyBags = T.heavy_bags,
    bag_refresh: o.BagRefresh = T.bag_refresh,
    biases: o.Biases = T.biases,
    objective: o.ObjectiveOption = o.ObjectiveChoice(T.objective),
    negatives: o.Negatives = T.negatives,
    negative_sampling: o.NegativeSamplingOption = o.NegativeSampling(T.negative_sampling),
    positives: o.PositivesOption = o.Positives(T.positives),
    ranking_weight: o.RankingWeight = T.ranking_weight,
    retrieval: o.RetrievalOption = o.Retrieval(T.retrieval),
    retrieve: o.RetrieveOption = T.retrieve,
    patience: o.Patience = T.patience,
    checkpoint_every: o.CheckpointEvery = T.checkpoint_every,
    nproc_per_node: o.NprocPerNode = 1,
    print_plan: o.PrintPlan = False,
    resume: o.Resume = None,
    config: o.ConfigFile = None,
    print_config: o.PrintConfig = False,
    device: o.DeviceOption = o.Device(T.device),
    store: o.StoreOption = DEFAULT_STORE,
) -> None:
    """Train a DLRM and save it as a checkpoint."""
    request = o.train_request(ctx)
    if print_config:
        typer.echo(o.to_toml(request.config), nl=False)
        return
    _train(request)


def _train(request: TrainRequest) -> None:
    """Train in this process (or, for more than one, launch the workers) and show the summary."""
    from dlrm_cli.cli import ui
    from dlrm_cli.training.distributed import launched_by_torchrun
    from dlrm_cli.training.request import prepare

    request = prepare(request)
    if request.processes > 1 and not launched_by_torchrun():
        from dlrm_cli.training.launch import launch

        result = launch(request)
    else:
        from dlrm_cli.training.run import train

        with ui.RichProgress(ui.err(), show_plan=request.show_plan) as progress:
            result = train(request, observer=progress)
    if result is not None:  # under torchrun, rank 0 alone reports
        ui.show_training_summary(result)
