"""Losses and the shared pieces of SSL methods, written once and tested against hand-computed values.

classification  cross-entropy with hard or soft targets (masked or not), ramp-up, pseudo-label accuracy
pseudo_labels   confidence thresholds (fixed, class-wise, self-adaptive), sharpening, distribution
                alignment, mixup
selfsup         SimCLR's NT-Xent, BYOL's regression loss, the contrastive accuracy monitor
memory          FIFO queue, labeled memory bank, queue-based alignment; SimMatch's propagation, CoMatch's
                smoothing, pseudo-label graph and graph contrastive loss
consistency     Π-model and Mean Teacher MSE, KL and entropy, VAT's adversarial perturbation
"""
