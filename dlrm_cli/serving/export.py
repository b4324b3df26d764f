"""Artifacts for serving: the trained model as plain PyTorch.

The exported module needs neither dlrm_cli nor TorchRec to load: its embedding tables are
``nn.EmbeddingBag`` copies of the trained ones and its MLPs and interaction are traced into the artifact.
It takes one of two kinds of input (B batch, Dn dense features, F sparse features):

``ids`` (``IdServingDLRM``, the default): ``model(users, items) -> (ratings, user_known, item_known)``
    users, items: int64, size B: the raw ids (string ids: their place in the description's vocabulary);
    the ids' rows and features are looked up inside, then the features model below rates them.
    A model with context columns takes ``model(users, items, context_dense, context_rows)`` (see
    ``ContextIdServingDLRM``): each pair's raw numeric context values and categorical vocabulary rows.
``features`` (``ServingDLRM``): ``model(dense, ids, offsets) -> ratings``
    dense:   float32, B x Dn, standardised as described in the side file
    ids:     F int64 tensors; ids[f] holds the embedding rows of feature f for the whole batch, concatenated
    offsets: F int64 tensors of size B; offsets[f][b] is where sample b's rows start in ids[f]
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dlrm_cli.config import ExportSpec
from dlrm_cli.data.catalog import Catalog, EntityTable, Ratings
from dlrm_cli.data.context import ContextRows, ContextTable, RawContext
from dlrm_cli.data.sources import load_dataset
from dlrm_cli.errors import DataError, DlrmError, DlrmUsageError
from dlrm_cli.model.dlrm import RatingDLRM, to_rating
from dlrm_cli.runtime.files import sidecar_path, temporary_beside
from dlrm_cli.runtime.progress import Progress, silent
from dlrm_cli.runtime.quiet import quiet_library_logs
from dlrm_cli.scoring.metrics import EVAL_BATCH, auc, context_slice, error_metrics, score
from dlrm_cli.serving.artifact import ServingDLRM, id_module, plain_inputs
from dlrm_cli.store.loading import LoadedModel

PARITY_TOLERANCE = 1e-5
DESCRIPTION_FILE = "dlrm.json"  # the description inside an artifact (extra files of torch.export / TorchScript)


def export_model(
    model: RatingDLRM,
    catalog: Catalog,
    spec: ExportSpec,
    path: Path,
    example: tuple[Any, ...],
    description: dict[str, Any],
) -> Any:
    """Write the artifact at ``path`` (the caller's temporary file), ``description`` inside it as
    ``dlrm.json``, and return it loaded back."""
    extra = {DESCRIPTION_FILE: json.dumps(description)}
    if spec.quantize == "int8":
        import torchrec

        from dlrm_cli.model.int8 import QuantizedServingDLRM

        with quiet_library_logs():
            scorer = torch.jit.script(torchrec.fx.symbolic_trace(QuantizedServingDLRM(model, spec.head).eval()))
        module = id_module(scorer, catalog) if spec.inputs == "ids" else scorer
        torch.jit.save(torch.jit.script(module), str(path), _extra_files=extra)
        return load_artifact(path, spec.format)
    serving = float_module(model, catalog, spec.inputs, spec.head)
    if spec.format == "torchscript":
        torch.jit.save(torch.jit.script(serving), str(path), _extra_files=extra)
    else:
        batch = torch.export.Dim("batch", min=1)
        if spec.inputs == "ids":
            dynamic: tuple[Any, ...] = ({0: batch}, {0: batch})
            if len(example) == 4:  # context_dense and each categorical column's B x L rows
                widths = [{0: batch, 1: torch.export.Dim(f"context_{f}", min=1)} for f in range(len(example[3]))]
                dynamic = (*dynamic, {0: batch}, widths)
        else:
            features = len(example[1])
            dynamic = (
                {0: batch},
                [{0: torch.export.Dim(f"ids_{f}", min=1)} for f in range(features)],
                [{0: batch} for _ in range(features)],
            )
        program = torch.export.export(serving, example, dynamic_shapes=dynamic)
        with path.open("wb") as file:  # a file object: torch warns about any name not ending in .pt2
            torch.export.save(program, file, extra_files=extra)
    return load_artifact(path, spec.format)


def _replace_both(first: tuple[Path, Path], second: tuple[Path, Path]) -> None:
    """Rename two finished files into place, so that a failure leaves both old files (or none) there: the
    first target's old version is kept as a hard link until the second rename has succeeded."""
    (new, target), (new_second, target_second) = first, second
    backup = temporary_beside(target)
    try:
        os.link(target, backup)
    except FileNotFoundError:
        backup = None  # nothing there to keep
    try:
        os.replace(new, target)
        try:
            os.replace(new_second, target_second)
        except OSError:
            if backup is not None:
                os.replace(backup, target)
            else:
                target.unlink(missing_ok=True)
            raise
    finally:
        if backup is not None:
            backup.unlink(missing_ok=True)


def load_artifact(path: Path, fmt: str) -> Any:
    if fmt == "torchscript":
        return torch.jit.load(str(path))
    with path.open("rb") as file:
        return torch.export.load(file).module()


def float_module(model: RatingDLRM, catalog: Catalog, inputs: str, head: str = "") -> nn.Module:
    """The float serving copy of ``model`` that takes ``inputs`` (``ids`` or ``features``) and serves ``head``
    (by default the first)."""
    serving: nn.Module = ServingDLRM(model.cpu(), head).eval()
    return id_module(serving, catalog) if inputs == "ids" else serving


def float_size(model: RatingDLRM, catalog: Catalog, inputs: str, head: str = "") -> int:
    """Bytes of the float TorchScript artifact, to compare a quantized one with."""
    import io

    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(float_module(model, catalog, inputs, head)), buffer)
    return len(buffer.getvalue())


def describe(model: RatingDLRM, catalog: Catalog, spec: ExportSpec, checkpoint: str) -> dict[str, Any]:
    """The description of an artifact's inputs: written beside it (``PATH.json``) and inside it (``dlrm.json``)."""
    load = "torch.jit.load(path)" if spec.format == "torchscript" else "torch.export.load(path).module()"
    if spec.quantize:
        load = "import torchrec; torch.jit.load(path)  # torchrec registers FBGEMM's int8 operators"
    features = {
        "dense": {
            "shape": ["B", len(catalog.dense_names)],
            "dtype": "float32",
            "features": catalog.dense_names,
            "note": "standardised with the training data's statistics",
        },
        "sparse": [
            {"feature": name, "rows": rows, "ids": _feature_ids(catalog, name), "offsets": "int64, size B"}
            for name, rows in catalog.sparse_features
        ],
    }
    head = spec.head or model.config.heads[0]
    low, span = model.head_scale(head)
    # a rating head outputs ratings; a ranking head the probability of an interaction, which ranks items
    outputs = "ratings" if head == "rating" else "scores"
    described: dict[str, Any] = {
        "checkpoint": checkpoint,
        "format": spec.format,
        "inputs": spec.inputs,
        "quantize": spec.quantize,
        "load": load,
        "head": head,
        "rating_range": [low, low + span],
    }
    if head == "ranking":
        described["scores"] = "the probability (0 to 1) that the user picks the item: rank a user's items by it"
    if catalog.context is not None:
        described["context"] = _context_description(catalog.context, spec)
    if spec.inputs == "features":
        return {
            **described,
            "call": f"model(dense, ids, offsets) -> {outputs} (float32, size B)",
            **features,
            "note": "ids[f] holds feature f's embedding rows for the whole batch, concatenated; offsets[f][b] is "
            "where sample b's rows start. Export with --inputs ids for an artifact that takes raw ids.",
        }
    call = "model(users, items, context_dense, context_rows)" if catalog.context is not None else "model(users, items)"
    return {
        **described,
        "call": f"{call} -> ({outputs}, user_known, item_known); users and items int64, size B",
        "users": _id_description(catalog.users),
        "items": _id_description(catalog.items),
        "unknown_ids": (
            "an id the checkpoint does not know is rated as dlrm predict rates it (the out-of-vocabulary "
            "embedding and average features), and its *_known flag is false"
            if catalog.users.has_oov and catalog.items.has_oov
            else "this checkpoint has no out-of-vocabulary row (synthetic data): the rating of an unknown id "
            "(its *_known flag false) means nothing"
        ),
        "features": {
            **features,
            "note": "what the ids become inside the artifact; dlrm export --inputs features writes an artifact "
            f"that takes these instead: model(dense, ids, offsets) -> {outputs}",
        },
    }


def _context_description(table: ContextTable, spec: ExportSpec) -> dict[str, Any]:
    """How an artifact takes the model's context columns (the numeric ones, then the categorical ones), and
    what stands for each column's default."""
    defaults = table.parse(None)[0]
    rows = (
        "a value's row is its position in vocabulary + 1; 0: a value not in it. Several values of one column "
        "(|-separated in the data) are summed"
    )
    numeric: dict[str, Any] = {"columns": list(table.dense), "mean": list(table.mean), "std": list(table.std)}
    categorical = [
        {
            "column": name,
            "vocabulary": list(vocabulary),
            "default": table.defaults[name],
            "default_rows": defaults.sparse[name][0].tolist(),
        }
        for name, vocabulary in table.vocabularies.items()
    ]
    described: dict[str, Any] = {"order": table.names, "defaults": dict(table.defaults)}
    if spec.inputs == "features":
        numeric["input"] = (
            "the last columns of dense (context_NAME), standardised by the caller: (value - mean) / std; the default: 0"
        )
        described["rows"] = f"each categorical column is the sparse feature of its name: {rows}"
        return {**described, "numeric": numeric, "categorical": categorical}
    numeric["input"] = (
        f"context_dense: float32, B x {len(table.dense)}, the raw values in columns order, standardised inside "
        "with mean and std; NaN: the column's default (its training mean)"
    )
    described["rows"] = (
        "context_rows: a list of one int64 tensor per categorical column, in order, each B x L (L: the most "
        f"values a sample has, fewer padded with -1): {rows}"
    )
    described["omitted"] = (
        "a pt2 artifact takes both context inputs: NaN in context_dense and each column's default_rows give the "
        "defaults"
        if spec.format == "pt2"
        else "leave out context_dense or context_rows (or pass None): their columns take their defaults"
    )
    return {**described, "numeric": numeric, "categorical": categorical}


def parity_context(table: ContextTable, n: int) -> RawContext:
    """``n`` contexts unlike the defaults, for the parity check: numeric values over the training range (each
    exact in float32, as a caller sends them; one in 11 missing), categorical values in turn, one in 5 not in
    the vocabulary and one in 7 two values at once (the first among them, so that an example has L = 2)."""
    index = np.arange(n)
    dense = {}
    for name, mean, std in zip(table.dense, table.mean, table.std, strict=True):
        values = (mean + std * ((index % 7) - 3) / 2).astype(np.float32).astype(np.float64)
        values[index % 11 == 10] = np.nan
        dense[name] = values
    sparse = {}
    for name, vocabulary in table.vocabularies.items():
        words = list(vocabulary) or ["?"]
        values = [words[i % len(words)] for i in range(n)]
        for i in range(n):
            if i % 7 == 0:
                values[i] = f"{values[i]}|{words[(i + 1) % len(words)]}"
            elif i % 5 == 4:
                values[i] = "(not in the vocabulary)"
        sparse[name] = np.array(values, dtype=object)
    return RawContext(dense, sparse)


def raw_dense(table: ContextTable, context: ContextRows) -> torch.Tensor:
    """What an ids artifact takes as ``context_dense`` for these model inputs: the raw numeric values."""
    values = context.dense.to(torch.float64) * torch.tensor(table.std, dtype=torch.float64)
    return (values + torch.tensor(table.mean, dtype=torch.float64)).to(torch.float32)


def default_inputs(table: ContextTable, n: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """An ids artifact's context inputs that stand for every column's default, for ``n`` pairs."""
    rows = table.parse(None)[0].sparse
    return torch.full((n, len(table.dense)), float("nan")), [rows[name].expand(n, -1) for name in table.vocabularies]


def two_stage_note(loaded: LoadedModel) -> str:
    """What an artifact of a two-stage checkpoint leaves out, and where the two stages are served."""
    stages = loaded.stages
    assert stages is not None
    generator = {"ease": "EASE", "svd": "PureSVD"}[stages.generator.kind]
    return (
        f"checkpoint {loaded.checkpoint.name} recommends in two stages: {generator} proposes {stages.candidates} "
        "candidates per user from the items the user knows, and a DLRM ranker orders them by pair features. "
        "This artifact holds the main model alone, not the retrieval stage or the ranker: it scores any "
        "(user, item) pair you give it, and ranks items only as the main model does. Recommend with both "
        "stages through dlrm serve (/recommend), dlrm recommend or the Python API."
    )


def _feature_ids(catalog: Catalog, feature: str) -> str:
    """What an artifact's ``ids`` hold for one sparse feature: embedding rows, or for a pooled bag the row of
    the entity that owns it."""
    for entities, of in ((catalog.users, "user"), (catalog.items, "item")):
        if feature in entities.bags:
            return (
                f"int64, one per sample: the {of}'s row ({of} ids sorted, an unknown {of}: the last row); "
                f"the {of}'s bag of training ratings is pooled inside the artifact"
            )
    return "int64 embedding rows"


def _id_description(table: EntityTable) -> dict[str, Any]:
    if table.integer_ids:
        return {"count": len(table.keys), "ids": "the integer ids of the data, as int64"}
    return {
        "count": len(table.keys),
        "ids": "the id's position in vocabulary (int64); an id not in it: -1",
        "vocabulary": table.keys.tolist(),
    }


def raw_ids(table: EntityTable, rows: torch.Tensor) -> torch.Tensor:
    """What an ids artifact takes for these entity rows: the integer ids, or the vocabulary positions."""
    known = rows < len(table.keys)
    if table.integer_ids:
        ids = torch.from_numpy(table.keys[rows.clamp(max=len(table.keys) - 1).numpy()]).to(torch.int64)
    else:
        ids = rows.to(torch.int64).clone()
    return torch.where(known, ids, unknown_id(table))  # the neutral row stands for an id never seen


def unknown_id(table: EntityTable) -> int:
    """An integer that is no id of ``table``, as an ids artifact sees ids."""
    if table.integer_ids:
        return int(table.keys.max()) + 1 if len(table.keys) else 0
    return -1


@dataclass(frozen=True)
class Quantization:
    """What int8 tables save and cost: artifact size, and against the float model, the test RMSE of a rating
    head or the test AUC of a ranking head (held-out pairs against seeded uniform negatives, as ``evaluate``)."""

    bytes: int
    float_bytes: int
    ratings: int
    float_rmse: float | None = None
    int8_rmse: float | None = None
    rmse_change: float | None = None
    float_auc: float | None = None
    int8_auc: float | None = None
    auc_change: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


@dataclass(frozen=True)
class ExportResult:
    """A written artifact, its side file, and how closely it agrees with the checkpoint."""

    checkpoint: str
    format: str
    inputs: str
    head: str
    output: str
    description: str
    bytes: int
    parity_samples: int
    max_abs_difference: float
    quantization: Quantization | None = None
    two_stages: str | None = None  # a two-stage checkpoint: what the artifact leaves out

    def to_dict(self) -> dict[str, Any]:
        report = asdict(self)
        if self.two_stages is None:
            del report["two_stages"]
        if self.quantization is None:
            del report["quantization"]
        else:
            report["quantization"] = self.quantization.to_dict()
        return report


def export_checkpoint(loaded: LoadedModel, output: Path, spec: ExportSpec, progress: Progress = silent) -> ExportResult:
    """Write ``loaded`` as a serving artifact at ``output`` and its input description at ``output``.json,
    after checking the artifact against the eager model on up to 1,024 held-out ratings, and (ids artifacts)
    on ids it never saw; nothing is left at ``output`` when the check fails. ``progress`` hears each step."""
    catalog, heads = loaded.catalog, loaded.model.config.heads
    if spec.head and spec.head not in heads:
        raise DlrmUsageError(
            f"checkpoint {loaded.checkpoint.name} has no {spec.head} head (its heads: {', '.join(heads)}; "
            "train with --objective both for both): leave out --head"
        )
    spec = replace(spec, head=spec.head or heads[0])
    users, items = loaded.known.parity_users, loaded.known.parity_items  # held-out pairs kept in the checkpoint
    if spec.inputs == "ids" and catalog.users.has_oov and catalog.items.has_oov:
        # an unknown user with a known item, and the other way round: both take the neutral rows
        users = torch.cat((users, torch.tensor([catalog.users.neutral_row, users[0]])))
        items = torch.cat((items, torch.tensor([items[0], catalog.items.neutral_row])))
    context = catalog.context.encode(parity_context(catalog.context, len(users))) if catalog.context else None
    example = _artifact_inputs(catalog, users, items, spec.inputs, context)  # with context inputs, if any
    sidecar = sidecar_path(output)
    tmp, sidecar_tmp = temporary_beside(output), temporary_beside(sidecar)
    description = describe(loaded.model, catalog, spec, loaded.checkpoint.name)
    if loaded.stages is not None:
        description["two_stages"] = two_stage_note(loaded)
    try:
        tmp.write_bytes(b"")  # an unwritable place fails here with a plain OSError, not inside torch's C++
        progress(f"Exporting {loaded.checkpoint.name} as {spec.format}")
        artifact = export_model(loaded.model, catalog, spec, tmp, example, description)
        progress(f"Checking parity on {len(users):,} held-out pairs")
        difference = _parity(loaded, artifact, spec, users, items, context)
        if not difference <= PARITY_TOLERANCE:
            raise DlrmError(
                f"the exported model disagrees with the checkpoint by {difference:.3g} "
                f"(limit {PARITY_TOLERANCE:g}); nothing was written"
            )
        sidecar_tmp.write_text(json.dumps(description, indent=2) + "\n")
        _replace_both((tmp, output), (sidecar_tmp, sidecar))
    except OSError as error:
        raise DlrmError(f"cannot write {output}: {error.strerror or error}") from None
    finally:
        tmp.unlink(missing_ok=True)
        sidecar_tmp.unlink(missing_ok=True)
    size = output.stat().st_size
    return ExportResult(
        checkpoint=loaded.checkpoint.name,
        format=spec.format,
        inputs=spec.inputs,
        head=spec.head,
        output=str(output),
        description=str(sidecar),
        bytes=size,
        parity_samples=len(users),
        max_abs_difference=difference,
        quantization=_quantization(loaded, artifact, size, spec, progress) if spec.quantize else None,
        two_stages=description.get("two_stages"),
    )


def _parity(
    loaded: LoadedModel,
    artifact: Any,
    spec: ExportSpec,
    users: torch.Tensor,
    items: torch.Tensor,
    context: ContextRows | None,
) -> float:
    """The largest difference between the artifact and the eager model on these pairs: with no context given
    (each column at its default), and for a model with context columns in ``context`` too."""
    from dlrm_cli.model.int8 import QuantizedServingDLRM

    catalog, table = loaded.catalog, loaded.catalog.context
    quantized = QuantizedServingDLRM(loaded.model, spec.head).eval() if spec.quantize else None
    difference = 0.0
    for given in [None, context] if context is not None else [None]:
        inputs = _artifact_inputs(catalog, users, items, spec.inputs, given)
        if given is None and table is not None and spec.inputs == "ids" and spec.format == "pt2":
            inputs = (*inputs, *default_inputs(table, len(users)))  # a pt2 artifact takes every input
        with torch.inference_mode():
            exported = artifact(*inputs)
            if quantized is not None:  # an int8 artifact must match the eager int8 model, not the float one
                eager = quantized(*plain_inputs(catalog, users, items, given))
            else:
                eager = _eager(loaded, users, items, spec.head, given)
        if spec.inputs == "ids":
            exported, user_known, item_known = exported
            if not (
                torch.equal(user_known, users < len(catalog.users))
                and torch.equal(item_known, items < len(catalog.items))
            ):
                raise DlrmError("the exported model does not tell known ids from unknown ones; nothing was written")
        difference = max(difference, float((exported - eager).abs().max()))
    return difference


def _eager(
    loaded: LoadedModel, users: torch.Tensor, items: torch.Tensor, head: str, context: ContextRows | None = None
) -> torch.Tensor:
    """What the float artifact must output for these pairs (in ``context``, as ``score``'s): the head's
    output on its scale."""
    cpu = torch.device("cpu")
    if head == "ranking":  # the ranking head's logit, squashed onto its scale as the artifact squashes it
        logits = score(loaded.model, loaded.catalog, users, items, cpu, ranking=True, context=context)
        return to_rating(logits, *loaded.model.head_scale(head))
    return score(loaded.model, loaded.catalog, users, items, cpu, context=context)


def _artifact_inputs(
    catalog: Catalog,
    user_rows: torch.Tensor,
    item_rows: torch.Tensor,
    inputs: str,
    context: ContextRows | None = None,
) -> tuple:
    """What the artifact takes for these (user row, item row) pairs; ``context``: each pair's (N rows, or one
    for all), or None for no context inputs (each column at its default)."""
    if context is not None and len(context) == 1:
        context = context.expand(len(user_rows))
    if inputs == "features":
        return plain_inputs(catalog, user_rows, item_rows, context)
    ids = raw_ids(catalog.users, user_rows), raw_ids(catalog.items, item_rows)
    if context is None or catalog.context is None:
        return ids
    rows = [context.sparse[name] for name in catalog.context.vocabularies]
    return (*ids, raw_dense(catalog.context, context), rows)


def _test_rows(loaded: LoadedModel, progress: Progress = silent) -> tuple[Ratings, Ratings]:
    """The test and training rows to measure an int8 artifact on: the data's where it can be read, else the
    held-out ratings and the training pairs that the checkpoint keeps."""
    progress(f"Loading the {loaded.checkpoint.run.data.kind} data")
    try:
        data = load_dataset(loaded.checkpoint.run.data)
        return data.test, data.train
    except DataError:
        users, items = loaded.known.seen.pairs()
        return loaded.known.held_out, Ratings(users, items, torch.zeros(len(items)))


def _quantization(
    loaded: LoadedModel, artifact: Any, size: int, spec: ExportSpec, progress: Progress = silent
) -> Quantization:
    """The int8 artifact against the float model on the test rows."""
    (held_out, train), catalog = _test_rows(loaded, progress), loaded.catalog

    def served(users: torch.Tensor, items: torch.Tensor, context: ContextRows | None) -> torch.Tensor:
        with torch.inference_mode():
            scored = artifact(*_artifact_inputs(catalog, users, items, spec.inputs, context))
        return scored[0] if spec.inputs == "ids" else scored

    def eager(users: torch.Tensor, items: torch.Tensor, context: ContextRows | None) -> torch.Tensor:
        return _eager(loaded, users, items, spec.head, context)

    float_bytes = float_size(loaded.model, catalog, spec.inputs, spec.head)
    pairs: dict[str, tuple[Any, ...]] = {"test ratings": (held_out.user, held_out.item, held_out.context)}
    if spec.head == "ranking":
        from dlrm_cli.scoring.evaluation import seeded_negatives

        negatives = seeded_negatives(loaded, held_out, train)  # each in its pair's context, as evaluate's AUC
        pairs = {"test pairs": (held_out.user, held_out.item, held_out.context), "sampled negatives": negatives}
    scores = {
        tables: [
            _in_steps(model, *rows, f"{tables} tables: scoring the {name}", progress) for name, rows in pairs.items()
        ]
        for tables, model in (("int8", served), ("float", eager))
    }
    if spec.head == "ranking":
        int8, exact = auc(*scores["int8"]), auc(*scores["float"])
        return Quantization(size, float_bytes, len(held_out), float_auc=exact, int8_auc=int8, auc_change=int8 - exact)
    int8_rmse = error_metrics(scores["int8"][0], held_out.rating)["rmse"]
    float_rmse = error_metrics(scores["float"][0], held_out.rating)["rmse"]
    return Quantization(
        size, float_bytes, len(held_out), float_rmse=float_rmse, int8_rmse=int8_rmse, rmse_change=int8_rmse - float_rmse
    )


def _in_steps(
    score_pairs: Any,
    users: torch.Tensor,
    items: torch.Tensor,
    context: ContextRows | None,
    label: str,
    progress: Progress,
) -> torch.Tensor:
    """``score_pairs(users, items, context)`` a batch at a time, telling ``progress`` how many pairs are done."""
    out, total = [], len(users)
    progress(label, 0, total)
    for start in range(0, total, EVAL_BATCH):
        chunk = slice(start, start + EVAL_BATCH)
        out.append(score_pairs(users[chunk], items[chunk], context_slice(context, start, len(users[chunk]))))
        progress(label, min(start + EVAL_BATCH, total), total)
    return torch.cat(out) if out else torch.empty(0)
