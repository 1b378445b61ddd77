"""Small hand-written nnU-Net plans: every kind of configuration the trainers must build from.

Hippocampus plans have only 2d and 3d_fullres; these add a 3d_lowres + 3d_cascade_fullres
pair (nnU-Net's cascade, with the lowres stage's anisotropic strides) and a ResEnc-style
configuration, at patch sizes small enough for quick CPU forward passes.
"""
from copy import deepcopy

DATASET_JSON = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
                "numTraining": 10, "file_ending": ".nii.gz"}
IMPORTS = ["conv_op", "norm_op", "dropout_op", "nonlin"]


def plain_architecture(dim: int, strides, features=(8, 16, 32)) -> dict:
    n = len(strides)
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n, "features_per_stage": list(features[:n]),
            "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
            "kernel_sizes": [[3] * dim] * n, "strides": [list(s) for s in strides],
            "n_conv_per_stage": [2] * n, "n_conv_per_stage_decoder": [2] * (n - 1), "conv_bias": True,
            "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": list(IMPORTS),
    }


def resenc_architecture(dim: int, strides) -> dict:
    """As nnU-Net's ResEnc planners write it (n_blocks_per_stage, ResidualEncoderUNet)."""
    arch = plain_architecture(dim, strides)
    arch["network_class_name"] = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    kwargs = arch["arch_kwargs"]
    del kwargs["n_conv_per_stage"]
    kwargs["n_blocks_per_stage"] = [1, 3, 4][: len(strides)]
    kwargs["n_conv_per_stage_decoder"] = [1] * (len(strides) - 1)
    return arch


def _configuration(patch, spacing, data_identifier, batch_size, architecture=None, **extra) -> dict:
    conf = {"data_identifier": data_identifier, "preprocessor_name": "DefaultPreprocessor",
            "batch_size": batch_size, "patch_size": list(patch), "median_image_size_in_voxels": list(patch),
            "spacing": list(spacing), "normalization_schemes": ["ZScoreNormalization"],
            "use_mask_for_norm": [False], "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                   "force_separate_z": None},
            "batch_dice": False}
    if architecture is not None:
        conf["architecture"] = architecture
    conf.update(extra)
    return conf


def handwritten_plans() -> dict:
    """Plans for configurations 2d, 3d_fullres, 3d_lowres, 3d_cascade_fullres and 3d_resenc."""
    return deepcopy({
        "dataset_name": "Dataset004_Hippocampus", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": [36, 50, 35], "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {"max": 1.0, "mean": 0.5, "median": 0.5, "min": 0.0,
                                                              "percentile_00_5": 0.0, "percentile_99_5": 1.0,
                                                              "std": 0.1}},
        "configurations": {
            "2d": _configuration((32, 24), (1.0, 1.0), "nnUNetPlans_2d", 12,
                                 plain_architecture(2, [(1, 1), (2, 2), (2, 2)])),
            "3d_fullres": _configuration((16, 24, 16), (1.0, 1.0, 1.0), "nnUNetPlans_3d_fullres", 2,
                                         plain_architecture(3, [(1, 1, 1), (2, 2, 2), (2, 2, 2)])),
            "3d_lowres": _configuration((8, 16, 16), (2.0, 1.0, 1.0), "nnUNetPlans_3d_lowres", 2,
                                        plain_architecture(3, [(1, 1, 1), (1, 2, 2), (2, 2, 2)]),
                                        inherits_from="3d_fullres", next_stage="3d_cascade_fullres"),
            "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"},
            "3d_resenc": _configuration((16, 24, 16), (1.0, 1.0, 1.0), "nnUNetPlans_3d_fullres", 2,
                                        resenc_architecture(3, [(1, 1, 1), (2, 2, 2), (2, 2, 2)]),
                                        inherits_from="3d_fullres"),
        },
    })
