"""Input conventions the configs, the transforms and the exported model share (numpy only, so
the base config can import this file without the data stack)."""
import numpy as np

# TSN's multi-scale crop: crop sides as fractions of the frame's short side.
TSN_SCALES = (1.0, 0.875, 0.75, 0.66)

# Mean and std per input convention, the `input_norm` of a backbone (cstm_jax/config/zoo.py):
# BGR 0-255 minus the mean for the Caffe Inception nets, RGB ImageNet mean/std for torchvision's.
NORMALISATION = {
    'bgr255': (np.array([104.0, 117.0, 128.0], np.float32), np.ones(3, np.float32)),
    'rgb_imagenet': (np.array([0.485, 0.456, 0.406], np.float32) * 255,
                     np.array([0.229, 0.224, 0.225], np.float32) * 255),
    # RGB scaled to [-1, 1]: TensorFlow's Inception nets (I3D, S3D) and torchvision's GoogLeNet,
    # whose `transform_input` maps ImageNet-normalised input back to (x - 0.5) / 0.5.
    'rgb_pm1': (np.full(3, 127.5, np.float32), np.full(3, 127.5, np.float32)),
}
