from monai_moe_reg.networks.nets.shmoareg import SHMoAReg

__all__ = ["SHMoAReg"]
