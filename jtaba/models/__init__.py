"""Flax model families. Each family module (adm, dit, unet2d, if_unet, vae, vq) defines a frozen ``Config``
dataclass (a ``jtaba.config.ConfigBase``) and a flax.linen ``Network`` whose ``__call__`` takes NHWC inputs;
``ops``, ``diffusers_blocks`` and ``autoencoder`` hold the parts they share."""
