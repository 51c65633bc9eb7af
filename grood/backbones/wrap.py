"""Any classifier as a :class:`~grood.backbones.base.SplitNetwork`, split by layer name (paper eq. 1).

``grood.wrap(model, early_layer="layer1", feature_layer="avgpool", head_layer="fc")`` traces ``model``'s
forward with :mod:`torch.fx` (the three named submodules kept as single calls) and cuts the traced graph
in three, so that ``head(mid(early(x)))`` runs exactly the operations of ``model(x)``:

- ``early(x)``: from the input to the output of ``early_layer`` (``h_early``, in the model's own layout).
- ``mid(h_early)``: from there to the **input of** ``head_layer``, which must be ``[N, D]``: the
  penultimate features ``h_pen``.
- ``head(h_pen)``: ``head_layer`` and whatever the forward does after it, up to the logits ``[N, C]``.

``feature_layer`` names the module whose output *is* the penultimate feature up to reshaping: between
it and ``head_layer`` the forward may only flatten, view, reshape, squeeze or apply dropout / identity
(eval mode). ``feature_layer=None`` takes whatever ``head_layer`` receives; this is the rule for networks
whose feature is not a module's output, e.g. ViT's class token ``x[:, 0]`` before ``heads``.

Layer names for torchvision classifiers (``torchvision.models.get_model(name)``; the early layer is
"after the first block", the paper's default):

============================  ======================================  ===============  ==================
model                         early_layer                             feature_layer    head_layer
============================  ======================================  ===============  ==================
resnet18 / resnet50           ``layer1``                              ``avgpool``      ``fc``
vit_b_16                      ``encoder.layers.encoder_layer_0``      None             ``heads``
swin_t                        ``features.1``                          ``flatten``      ``head``
convnext_tiny                 ``features.1``                          None             ``classifier.2``
efficientnet_b0               ``features.1``                          ``avgpool``      ``classifier``
============================  ======================================  ===============  ==================

(ConvNeXt normalises the pooled features inside ``classifier`` (``classifier.0`` is a LayerNorm), so
its feature is the input of the final ``classifier.2`` Linear.)

The forward is traced once, in eval mode, with every forward argument after the first at its default;
Python control flow that depends on tensor values cannot be traced (the error says so). The wrapped
network shares ``model``'s parameters (``wrap`` copies nothing); its state dict holds the model's keys
under ``model.``.
"""

from __future__ import annotations

import inspect
import operator
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from grood.backbones.base import IMAGENET_MEAN, IMAGENET_STD, SplitNetwork

#: Modules that leave a tensor's values unchanged in eval mode (allowed between feature and head layers).
_IDENTITY_MODULES = (nn.Flatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                     nn.AlphaDropout, nn.FeatureAlphaDropout)
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.nn.functional.dropout}
_RESHAPE_METHODS = {"flatten", "view", "reshape", "squeeze", "contiguous", "size", "dim"}


class SplitError(ValueError):
    """A model cannot be split at the layer names given; the message lists the names it can be split at."""


class _Tracer(fx.Tracer):
    """torch.fx's tracer with the named modules kept as leaves; records every module the forward calls."""

    def __init__(self, leaves: set[str]) -> None:
        super().__init__()
        self.leaves = leaves
        self.called: list[str] = []

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return qualified_name in self.leaves or super().is_leaf_module(module, qualified_name)

    def call_module(self, module: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        name = self.path_of_module(module)
        if name not in self.called:
            self.called.append(name)
        return super().call_module(module, forward, args, kwargs)


def _trace(model: nn.Module, leaves: set[str]) -> tuple[fx.Graph, list[str]]:
    """``model``'s forward as a graph (eval mode, later arguments at their defaults) and the modules it calls."""
    parameters = list(inspect.signature(model.forward).parameters.values())
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not positional:
        raise SplitError(f"{type(model).__name__}.forward takes no positional input; wrap needs forward(x)")
    concrete = {}
    for parameter in positional[1:]:
        if parameter.default is parameter.empty:
            raise SplitError(
                f"{type(model).__name__}.forward needs argument {parameter.name!r} besides the images; wrap traces "
                "forward(x) with every other argument at its default, so give it a default"
            )
        concrete[parameter.name] = parameter.default
    tracer = _Tracer(leaves)
    was_training = model.training
    model.eval()
    try:
        graph = tracer.trace(model, concrete_args=concrete or None)
    except Exception as error:  # torch.fx raises TraceError, TypeError, RuntimeError, ... by construct
        raise SplitError(
            f"torch.fx cannot trace {type(model).__name__}.forward ({type(error).__name__}: {error}). Python control "
            "flow on tensor values cannot be traced: move it into a submodule that is not split at, or give "
            "grood a SplitNetwork subclass (grood/backbones/base.py)"
        ) from error
    finally:
        model.train(was_training)
    return graph, tracer.called


def _listed(called: list[str], model: nn.Module) -> str:
    """The called modules worth listing: depth 0 and 1 (``a``, ``a.b``) and, recursively, the children of
    listed containers (``encoder.layers.encoder_layer_0``)."""
    containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
    listed: list[str] = []
    for name in called:
        parent = name.rpartition(".")[0]
        if name.count(".") <= 1 or (parent in listed and isinstance(model.get_submodule(parent), containers)):
            listed.append(name)
    return ", ".join(listed) + " (modules the forward calls, in order; their submodules may be named too)"


def _module_call(graph: fx.Graph, name: str, role: str, model: nn.Module, called: list[str]) -> fx.Node:
    try:
        model.get_submodule(name)
    except AttributeError:
        raise SplitError(f"{role}={name!r} is not a submodule of {type(model).__name__}; valid names: "
                         f"{_listed(called, model)}") from None
    calls = [node for node in graph.nodes if node.op == "call_module" and node.target == name]
    if not calls:
        raise SplitError(f"{role}={name!r} is a submodule of {type(model).__name__} that its forward does not call; "
                         f"valid names: {_listed(called, model)}")
    if len(calls) > 1:
        raise SplitError(f"{role}={name!r} is called {len(calls)} times by {type(model).__name__}.forward, so it "
                         f"marks no single point of the network; valid names: {_listed(called, model)}")
    return calls[0]


def _ancestors(node: fx.Node, stop: set[fx.Node]) -> set[fx.Node]:
    """``node`` and every node it is computed from, not looking past the nodes in ``stop``."""
    seen: set[fx.Node] = set()
    pending = [node]
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        if current not in stop:
            pending.extend(current.all_input_nodes)
    return seen


def _subgraph(graph: fx.Graph, output: fx.Node, inputs: dict[fx.Node, str], part: str) -> fx.Graph:
    """A new graph computing ``output`` from placeholders standing for the nodes of ``inputs``."""
    needed = _ancestors(output, set(inputs))
    new = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        if node not in needed:
            continue
        if node in inputs:
            env[node] = new.placeholder(inputs[node])
            continue
        if node.op == "placeholder":
            users = sorted(user.name for user in node.users if user in needed)
            raise SplitError(
                f"{part} would need the forward's argument {node.target!r} directly (used by {users}): a path "
                "of the network goes around the layer it starts at (a skip connection), so the network cannot "
                "be cut there; choose a layer that every path passes through"
            )
        env[node] = new.node_copy(node, lambda n: env[n])
    new.output(env[output])
    new.lint()
    return new


def _is_reshape(node: fx.Node, model: nn.Module) -> bool:
    """True for the nodes allowed between feature_layer and head_layer (values unchanged up to shape)."""
    if node.op == "call_module":
        return isinstance(model.get_submodule(str(node.target)), _IDENTITY_MODULES)
    if node.op == "call_method":
        return node.target in _RESHAPE_METHODS
    if node.op == "call_function":
        if node.target in _RESHAPE_FUNCTIONS:
            return True
        if node.target is getattr and node.args[1] == "shape":
            return True
        source = node.args[0] if node.args else None
        return (node.target is operator.getitem and isinstance(source, fx.Node)
                and (source.target == "size" or (source.target is getattr and source.args[1] == "shape")))
    return False


class WrappedNetwork(SplitNetwork):
    """A model split by layer name (see the module docstring); build it with :func:`wrap`.

    ``split_block`` is always 0: the split point is ``early_layer`` (``block_names = (early_layer,)``);
    wrap again with another ``early_layer`` to move it.
    """

    default_split_block = 0

    def __init__(self, model: nn.Module, early_layer: str, feature_layer: str | None, head_layer: str,
                 input_mean: tuple[float, float, float] = IMAGENET_MEAN,
                 input_std: tuple[float, float, float] = IMAGENET_STD, input_size: int = 224) -> None:
        super().__init__()
        self.model = model
        self.early_layer, self.feature_layer, self.head_layer = early_layer, feature_layer, head_layer
        self.block_names = (early_layer,)
        self.input_mean, self.input_std, self.input_size = tuple(input_mean), tuple(input_std), int(input_size)
        self._early, self._mid, self._head, self._head_is_last = self._split()

    def _split(self) -> tuple[fx.Graph, fx.Graph, fx.Graph, bool]:
        model = self.model
        names = {"early_layer": self.early_layer, "head_layer": self.head_layer}
        if self.feature_layer is not None:
            names["feature_layer"] = self.feature_layer
        for role, name in names.items():
            if not isinstance(name, str) or not name:
                raise SplitError(f"{role} must be a submodule name such as 'layer1'; got {name!r}")
        graph, called = _trace(model, set(names.values()))
        nodes = {role: _module_call(graph, name, role, model, called) for role, name in names.items()}
        early, head = nodes["early_layer"], nodes["head_layer"]
        tensors = head.all_input_nodes
        if len(tensors) != 1:
            raise SplitError(f"head_layer={self.head_layer!r} takes {len(tensors)} inputs computed by the network; "
                             "it must take exactly one, the penultimate features [N, D]")
        feature_input = tensors[0]
        output_node = next(node for node in graph.nodes if node.op == "output")
        logits = output_node.args[0]
        if not isinstance(logits, fx.Node):
            raise SplitError(f"{type(model).__name__}.forward returns {type(logits).__name__}, not one tensor; "
                             "wrap needs a forward(x) that returns the logits [N, C]")
        if early not in _ancestors(feature_input, set()):
            raise SplitError(f"early_layer={self.early_layer!r} does not come before head_layer={self.head_layer!r} "
                             f"in {type(model).__name__}.forward; valid names: {_listed(called, model)}")
        if self.feature_layer is not None:
            feature = nodes["feature_layer"]
            between = _ancestors(feature_input, {feature}) - {feature}
            if feature not in _ancestors(feature_input, set()) or early not in _ancestors(feature, set()):
                raise SplitError(
                    f"feature_layer={self.feature_layer!r} must lie between early_layer={self.early_layer!r} and "
                    f"head_layer={self.head_layer!r}; valid names: {_listed(called, model)}"
                )
            changing = sorted(getattr(node.target, "__name__", str(node.target)) for node in between
                              if not _is_reshape(node, model) and feature in _ancestors(node, set()))
            if changing:
                raise SplitError(
                    f"between feature_layer={self.feature_layer!r} and head_layer={self.head_layer!r} the network "
                    f"runs {changing}, which change the values, not only the shape; pass feature_layer=None to take head_layer's input as the feature"
                )
        images = next(node for node in graph.nodes if node.op == "placeholder")
        early_graph = _subgraph(graph, early, {images: "x"}, f"early (input to early_layer={self.early_layer!r})")
        mid_graph = _subgraph(graph, feature_input, {early: "h_early"},
                              f"mid (early_layer={self.early_layer!r} to head_layer={self.head_layer!r})")
        head_graph = _subgraph(graph, logits, {feature_input: "h_pen"},
                               f"head (head_layer={self.head_layer!r} to the logits)")
        head_is_last = logits is head
        return early_graph, mid_graph, head_graph, head_is_last

    def _run(self, graph: fx.Graph, value: torch.Tensor) -> torch.Tensor:
        return fx.Interpreter(self.model, graph=graph).run(value)

    # ------------------------------------------------------------------ SplitNetwork
    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(self._early, x)

    def _block(self, index: int, h: torch.Tensor) -> torch.Tensor:
        raise IndexError(f"a wrapped network has no blocks after its early layer {self.early_layer!r} "
                         f"(split_block is always 0); got block {index}")

    def _pool(self, h: torch.Tensor) -> torch.Tensor:
        features = self._run(self._mid, h)
        if not isinstance(features, torch.Tensor) or features.dim() != 2:
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise SplitError(
                f"the input of head_layer={self.head_layer!r} has shape {shape}, not [N, D]: GROOD's penultimate "
                "features must be flat vectors; choose a head_layer that receives [N, D] (e.g. the final Linear)"
            )
        return features

    def head(self, h_pen: torch.Tensor) -> torch.Tensor:
        """``[B, D] -> logits [B, C]``: ``head_layer`` and whatever the forward does after it."""
        return self._run(self._head, h_pen)

    @property
    def classifier(self) -> nn.Linear:
        """The final linear layer: ``head_layer`` itself, or the one Linear of a ``head_layer`` container
        whose other modules are dropout / identity / flatten."""
        module = self.model.get_submodule(self.head_layer)
        linear = module if isinstance(module, nn.Linear) else None
        if linear is None:
            children = [m for m in module.modules() if m is not module and not isinstance(m, nn.Sequential)]
            linears = [m for m in children if isinstance(m, nn.Linear)]
            others = [m for m in children if not isinstance(m, (nn.Linear, *_IDENTITY_MODULES))]
            if len(linears) == 1 and not others and isinstance(module, nn.Sequential):
                linear = linears[0]
        if linear is None or not self._head_is_last:
            raise TypeError(
                f"head_layer={self.head_layer!r} ({type(module).__name__}) is not the network's final linear layer"
                f"{'' if self._head_is_last else ' (the forward computes more after it)'}; detectors that read the "
                "linear head (weight [C, D], bias [C]) need it; name the final nn.Linear as head_layer"
            )
        return linear

    def extra_repr(self) -> str:
        return (f"early_layer={self.early_layer!r}, feature_layer={self.feature_layer!r}, "
                f"head_layer={self.head_layer!r}")


def wrap(
    model: nn.Module,
    early_layer: str = "layer1",
    feature_layer: str | None = "avgpool",
    head_layer: str = "fc",
    *,
    input_mean: tuple[float, float, float] = IMAGENET_MEAN,
    input_std: tuple[float, float, float] = IMAGENET_STD,
    input_size: int = 224,
) -> WrappedNetwork:
    """``model`` as the :class:`~grood.backbones.base.SplitNetwork` GROOD runs: ``early`` / ``mid`` / ``head``.

    Args:
        model: any ``nn.Module`` whose ``forward(x)`` returns logits ``[N, C]`` and passes through the
            named submodules once each (its parameters are shared, not copied).
        early_layer: the submodule after which ``early`` ends (the mixup layer of eq. 9).
        feature_layer: the submodule whose output, flattened, is the penultimate feature; None: the input
            of ``head_layer`` (see the module docstring for the names of torchvision's classifiers).
        head_layer: the final classifier layer; its input is ``h_pen [N, D]``.
        input_mean, input_std, input_size: the normalisation and input size the weights expect (used
            where grood makes images itself, e.g. the uniform-noise prototype).

    Returns:
        A :class:`WrappedNetwork` in ``model``'s current train/eval mode.

    Raises:
        SplitError: the names do not split ``model`` (the message lists the modules its forward calls),
            or its forward cannot be traced.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"wrap needs a torch.nn.Module; got {type(model).__name__}")
    network = WrappedNetwork(model, early_layer, feature_layer, head_layer, input_mean=input_mean,
                             input_std=input_std, input_size=input_size)
    return network.train(model.training)
