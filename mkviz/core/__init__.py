"""Layer 1, core: the model. Imports no other mkviz layer.

    key             ManifoldKey: the key path (docs/design.md §2), variants, the fast / reference switch
    attention       ManifoldAttention, ManifoldWindowAttention: timm drop-ins, fused and eager paths side by side
    families        BEiT, Swin V2, relative-position ViTs (rope_attention: RoPE / EVA; family_parts: shared parts)
    hf              Hugging Face transformers attention, converted and recorded
    hf_io           Hugging Face save_pretrained / from_pretrained: manifold-key config and model classes
    models          convert / create_model / fold, the unbalanced-atlas loss, class_logits
    segmentation    SegmentationModel, build_segmenter: a light head on a timm backbone's forward_intermediates
    timm_models     timm's registry: the `mkviz_<arch>` entrypoints (timm_build: the models behind them)
    overparam       the over-parameterised key control
    cost            parameters, FLOPs, the machine a cost was measured on
    switches        the attention layers of a model; eval mode and timm's eager path for a while
    modes           `temporarily`: set an attribute on several objects, restore each after
    checks          the one-line error convention: check_choice, ArgumentParser, run_command
    tracing         torch.fx and TorchScript: check_tokens (an FX leaf), is_symbolic, SCRIPT_REFUSAL
    pyramid         a timm ViT / Swin as a detection backbone: ViTDet's simple feature pyramid
    detection       build_detector (torchvision Mask R-CNN / Faster R-CNN on the pyramid), detection_loss
"""
