"""Layer 3, explain: what a model attends to. Imports core.

    maps            attention rows as pictures on the patch grid (ViT) or the stage grid (Swin)
    record          record_attention: fused and per-chart attention, chart keys, queries (chart_attention: A_c)
    metrics         entropy, distance, rollout, attention on evidence, 2-D projection (chart_similarity: the
                    charts compared; metric_inputs: the checks they share)
    relevance       Chefer et al.'s class relevance, per chart
    attribution     captum attributions: pixels, patches, attention
    faithfulness    deletion / insertion curves of saliency maps
    specialisation  chart statistics over training
    scene_attention a query on one object of a scene: its attention on that object, the others, the background
    detection_metrics  COCO box and mask mAP of a detector (torchmetrics, pycocotools): detection_map, coco_map
"""
