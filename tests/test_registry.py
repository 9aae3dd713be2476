import subprocess
import sys
from pathlib import Path

import pytest
import torch

import genkit
from genkit import registry
from genkit.errors import ConfigError, PluginError
from genkit.registry import AUTOLOAD_ENV
from tests.conftest import write_distribution

BUILTINS = {"ae", "vae-conv", "beta-vae", "iwae", "wae", "vamp-vae"}

GOOD_PLUGIN = """
    import genkit

    class Tiny(genkit.Model):
        '''A tiny third-party VAE.'''

        def __init__(self, config):
            super().__init__(
                config,
                encoder=genkit.get_encoder("mlp", config, hidden=16, layers=1),
                decoder=genkit.get_decoder("mlp", config, hidden=16, layers=1),
                prior=genkit.StandardNormal(config.latent),
                loss=genkit.ELBOLoss(),
            )
"""


def test_builtins_come_from_genkit_distribution():
    assert BUILTINS <= set(genkit.list_models())
    for name in BUILTINS:
        assert registry.models.info(name).distribution == "genkit"


@pytest.mark.parametrize(
    ("kind", "name"), [(kind, name) for kind, reg in registry.KINDS.items() for name in reg.names()]
)
def test_every_builtin_has_a_one_line_summary(kind, name):
    # genkit list and genkit info show a docstring's first line: a summary wrapped onto the next one is cut off
    reg = registry.KINDS[kind]
    if reg.info(name).distribution != registry.OWN_DISTRIBUTION:
        pytest.skip(f"{name} is a third-party {kind} plugin")
    obj = reg.load(name)
    lines = ((obj.description if isinstance(obj, genkit.Preset) else obj.__doc__) or "").strip().splitlines()
    assert lines and lines[0].strip(), f"{kind} {name} has no docstring"
    assert len(lines) == 1 or not lines[1].strip(), f"{kind} {name}: its summary line runs on: {lines[0]!r}"


def test_list_models_pattern():
    assert genkit.list_models("*vae*") == ["beta-tcvae", "beta-vae", "info-vae", "vae-conv", "vamp-vae", "vq-vae"]
    assert genkit.list_models("nothing*") == []


def test_none_overrides_keep_defaults():
    model = genkit.get_model("vae-conv", latent=None, channels=8, prior=None)
    assert model.config.latent == 10 and model.encoder.config.channels == 8 and model.prior.name == "normal"
    assert model.name == "vae-conv"


def test_unknown_option_is_a_config_error():
    with pytest.raises(ConfigError, match=r"unknown option.*bogus"):
        genkit.get_model("ae", bogus=3)


@pytest.mark.parametrize("value", [0, -3, 2.5, "10", True])
def test_bad_latent_rejected(value):
    with pytest.raises(ConfigError, match="latent"):
        genkit.get_model("vae-conv", latent=value)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: genkit.get_model("vae-cnv"), "did you mean vae-conv?"),
        (lambda: genkit.get_model("betavae"), "did you mean beta-vae, beta-tcvae?"),  # not aae, a worse match
        (lambda: genkit.get_prior("gausian", 4), "known: autoregressive, categorical, diffusion, factorized, gmm"),
    ],
)
def test_unknown_name_suggests_only_close_names(make, message):
    with pytest.raises(PluginError) as caught:
        make()
    assert message in str(caught.value)


def test_third_party_plugin_lists_and_builds(plugin_site):
    write_distribution(
        plugin_site, "tiny-vae", {"genkit.models": {"tiny": "fake_tiny:Tiny"}}, {"fake_tiny": GOOD_PLUGIN}
    )
    assert "tiny" in genkit.list_models()
    assert registry.models.info("tiny").distribution == "tiny-vae"
    model = genkit.get_model("tiny", latent=3)
    assert model.encode(genkit_batch()).mean.shape == (2, 3)
    # its own parts that are registered are recognised; any part can be swapped by name
    assert model.prior.name == "normal" and model.loss_fn.name == "elbo" and model.encoder.name == "mlp"
    swapped = genkit.get_model("tiny", latent=3, prior="mog", loss="iwae", **{"prior.components": 3})
    assert swapped.prior.name == "mog" and swapped.prior.config.components == 3 and swapped.loss_fn.name == "iwae"
    assert torch.isfinite(swapped.loss(genkit_batch()).total)


def test_a_model_plugins_own_unregistered_part_has_no_options(plugin_site):
    source = (
        GOOD_PLUGIN
        + """
    class Raw(genkit.Encoder):
        def __init__(self, latent):
            super().__init__()
            self.net = genkit_torch.nn.Linear(784, latent)

        def forward(self, x):
            return genkit.Posterior(self.net(x.flatten(1)), None)

    class RawTiny(Tiny):
        def __init__(self, config):
            super().__init__(config)
            self.encoder = Raw(config.latent)
    """
    )
    source = source.replace("import genkit\n", "import genkit\n    import torch as genkit_torch\n", 1)
    write_distribution(plugin_site, "raw-pkg", {"genkit.models": {"raw": "fake_raw:RawTiny"}}, {"fake_raw": source})
    with pytest.raises(ConfigError, match="the encoder of model raw is built by the model itself"):
        genkit.get_model("raw", **{"encoder.hidden": 4})
    with pytest.raises(ConfigError, match="loss elbo cannot work with encoder Raw"):
        genkit.get_model("raw")


def genkit_batch():
    import torch

    return torch.rand(2, 1, 28, 28)


def test_broken_plugin_is_flagged_and_others_still_build(plugin_site):
    write_distribution(
        plugin_site,
        "broken-pkg",
        {"genkit.models": {"broken": "fake_broken:Model"}},
        {"fake_broken": "raise ImportError('needs libfoo')\n"},
    )
    status = {info.name: obj for info, obj in registry.models.status()}
    assert isinstance(status["broken"], registry.FailedPlugin)
    assert str(status["broken"]).startswith("broken-pkg[broken]: failed to load fake_broken:Model")
    assert "needs libfoo" in str(status["broken"])
    for name in BUILTINS:
        assert not isinstance(status[name], registry.FailedPlugin)
        genkit.get_model(name)
    with pytest.raises(PluginError, match=r"broken-pkg\[broken\]"):
        genkit.get_model("broken")


def test_plugin_that_fails_to_build_names_its_distribution(plugin_site):
    source = """
        import genkit

        class Tiny(genkit.Model):
            def __init__(self, config):
                raise RuntimeError('no GPU here')
    """
    write_distribution(
        plugin_site, "bad-build", {"genkit.models": {"badbuild": "fake_badbuild:Tiny"}}, {"fake_badbuild": source}
    )
    with pytest.raises(PluginError, match=r"bad-build\[badbuild\]: failed to build: RuntimeError: no GPU here"):
        genkit.get_model("badbuild")


def test_plugin_of_wrong_type_is_rejected(plugin_site):
    write_distribution(
        plugin_site, "odd-pkg", {"genkit.models": {"odd": "fake_odd:thing"}}, {"fake_odd": "thing = 42\n"}
    )
    with pytest.raises(
        PluginError,
        match=r"odd-pkg\[odd\]: fake_odd:thing is not a subclass of genkit.model.Model nor a genkit.model.Preset",
    ):
        genkit.get_model("odd")


def test_two_distributions_claiming_one_name(plugin_site):
    for dist in ("first-pkg", "second-pkg"):
        write_distribution(plugin_site, dist, {"genkit.models": {"twin": "fake_tiny:Tiny"}}, {"fake_tiny": GOOD_PLUGIN})
    with pytest.raises(PluginError, match="'twin' is claimed by both first-pkg and second-pkg"):
        genkit.get_model("twin")
    genkit.get_model("vae-conv")  # the others are unaffected


def test_autoload_switch_hides_third_party_plugins(plugin_site, monkeypatch):
    write_distribution(
        plugin_site, "tiny-vae", {"genkit.models": {"tiny": "fake_tiny:Tiny"}}, {"fake_tiny": GOOD_PLUGIN}
    )
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    registry.models.refresh()
    assert "tiny" not in genkit.list_models()
    assert BUILTINS <= set(genkit.list_models())


def test_register_in_process_and_duplicate_is_an_error():
    preset = genkit.Preset("a local preset", encoder="mlp", decoder="mlp", prior="normal", loss="elbo")
    registry.models.register("local-vae", preset)
    try:
        assert registry.models.info("local-vae").distribution == "<local>"
        assert genkit.get_model("local-vae").description == "a local preset"
        with pytest.raises(PluginError, match="already provided"):
            registry.models.register("vae-conv", preset)
    finally:
        registry.models.unregister("local-vae")


def test_noise_spec_parsing():
    noise = genkit.get_noise("gaussian:0.5")
    assert noise.level == 0.5 and noise.spec == "gaussian:0.5"
    for bad in ("gaussian", "gaussian:abc", ":0.5", "salt-pepper:1.5", "gaussian:-1"):
        with pytest.raises((ConfigError, PluginError)):
            genkit.get_noise(bad)


def test_the_package_exports_every_public_name_lazily_and_statically():
    import ast
    import importlib

    source = ast.parse(Path(genkit.__file__).read_text())
    checking = next(n for n in source.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    static = {(node.module, a.name) for node in checking.body for a in node.names}
    assert static == {(module, name) for name, module in genkit._EXPORTS.items()}  # the two lists agree
    for name, module in genkit._EXPORTS.items():
        assert getattr(genkit, name) is getattr(importlib.import_module(module), name)
    assert set(dir(genkit)) >= set(genkit.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        genkit.nothing  # noqa: B018


def test_help_and_usage_errors_do_not_import_torch():
    code = (
        "import sys; from genkit.cli import main; main(['--help']); main(['run', '--epochs', 'x']); "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().endswith("False") and "Invalid value for '--epochs'" in result.stderr
