import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from ticketkit.artifacts.ticket import Ticket, load_ticket, pack_bits, unpack_bits
from ticketkit.errors import UsageError
from ticketkit.models import build_model, init_weights
from ticketkit.plugin import Setup
from ticketkit.plugins.methods.biprop import Biprop, BipropOptions
from ticketkit.plugins.methods.edgepopup import EdgePopup
from ticketkit.training.data import InputSpec

SPEC = InputSpec(1, 8, 8, 10)


def masked_mlp(method="biprop", init="kaiming-normal", k=0.3, alpha="layer", binary_act=False):
    model = build_model("mlp", SPEC, bias=False, affine_bn=False, width=0.2, binary_act=binary_act)
    init_weights(model, init, seed=0, scale_k=k)
    if method == "biprop":
        m = Biprop(BipropOptions(alpha=alpha), Setup(k=k))
    else:
        m = EdgePopup(None, Setup(k=k))
    m.prepare(model)
    m.finish(model)
    return model


def meta(**extra):
    return dict(
        arch="mlp",
        arch_kwargs={"width": 0.2, "binary_act": False, "affine_bn": False, "bias": False},
        input=vars(SPEC),
        method="biprop",
        method_options={},
        k=0.3,
        scope="layer",
        granularity="unstructured",
        init={},
        dataset="digits",
        metrics={},
        config={},
        **extra,
    )


def test_bit_packing_is_little_endian_and_round_trips():
    bits = torch.tensor([1, 0, 0, 0, 0, 0, 0, 0, 1, 1], dtype=torch.bool)
    packed = pack_bits(bits)
    assert packed.tolist() == [1, 3]
    assert torch.equal(unpack_bits(packed, 10), bits)


@pytest.mark.parametrize("alpha", ["layer", "channel"])
def test_binary_ticket_round_trip_is_exact(tmp_path, alpha):
    model = masked_mlp(alpha=alpha).eval()
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        expected = model(x)
    path = Ticket.from_model(model, **meta()).save(tmp_path / "t.safetensors")
    loaded = load_ticket(path)
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    t = Ticket.read(path)
    assert t.meta["weights"] == "sign"
    for info in t.meta["layers"].values():
        assert info["weights"] == "sign"


def test_signed_constant_edgepopup_is_a_sign_ticket_and_kaiming_is_values(tmp_path):
    sign = Ticket.from_model(masked_mlp("edgepopup", "signed-constant"), **meta())
    assert sign.meta["weights"] == "sign"
    values = Ticket.from_model(masked_mlp("edgepopup", "kaiming-normal"), **meta())
    assert values.meta["weights"] == "values"
    path = values.save(tmp_path / "v.safetensors")
    model = masked_mlp("edgepopup", "kaiming-normal").eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(load_ticket(path)(x), model(x))


def test_file_layout_readable_without_ticketkit(tmp_path):
    path = Ticket.from_model(masked_mlp(), **meta()).save(tmp_path / "t.safetensors")
    with safe_open(str(path), "np") as f:
        md = f.metadata()
        layers = json.loads(md["layers"])
        for name, info in layers.items():
            n = int(np.prod(info["shape"]))
            bits = np.unpackbits(f.get_tensor(f"{name}.mask"), count=n, bitorder="little")
            assert bits.sum() == info["kept"] == n - int((1 - 0.3) * n)
            assert f.get_tensor(f"{name}.sign").size == -(-info["kept"] // 8)
    assert md["format"] == "ticketkit.ticket/1"


def test_corrupt_truncated_and_foreign_files_are_clear_errors(tmp_path):
    path = Ticket.from_model(masked_mlp(), **meta()).save(tmp_path / "t.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError, match="truncated or corrupt"):
        Ticket.read(tmp_path / "cut.safetensors")
    (tmp_path / "text.safetensors").write_text("hello")
    with pytest.raises(UsageError, match="not a readable safetensors"):
        Ticket.read(tmp_path / "text.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(UsageError, match="not a ticketkit ticket"):
        Ticket.read(tmp_path / "plain.safetensors")
    flipped = bytearray(data)
    flipped[-1] ^= 0xFF  # last payload byte
    (tmp_path / "flip.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(UsageError, match="checksum"):
        Ticket.read(tmp_path / "flip.safetensors")


def test_shapes_not_matching_the_declared_arch(tmp_path):
    t = Ticket.from_model(masked_mlp(), **meta())
    t.meta["arch_kwargs"] = {**t.meta["arch_kwargs"], "width": 0.5}
    path = t.save(tmp_path / "t.safetensors")
    with pytest.raises(UsageError, match="does not match its declared arch"):
        load_ticket(path)
