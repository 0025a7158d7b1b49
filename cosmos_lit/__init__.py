"""cosmos_lit: Cosmos Policy (a latent video diffusion model as robot policy, world model and value function)
on PyTorch Lightning. Importing the package is cheap: components load on first use through the registry."""

__version__ = "0.1.0"
