from genkit.testing import ModelConformance


class TestMLPVAE(ModelConformance):
    model_name = "mlp-vae"
