"""Image quality: PSNR/SSIM by the community's protocol, NIQE, LPIPS, and the evaluation of
a restorer on a set of images.
"""
