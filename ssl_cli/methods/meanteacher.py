"""Mean Teacher (Tarvainen & Valpola, NeurIPS 2017, sec. 2): the target comes from an EMA of the student.

The student sees one weak view of each unlabeled image, the teacher θ'_t = α θ'_{t-1} + (1 - α) θ_t
(eq. 1) a second weak view; the consistency cost is the squared error between their softmaxes, weighted
by λ_u ramped up linearly over 40 % of training (as the Π-model frame).

The teacher is the trainer's EMA of the weights (trainer.ema_decay, 0.999 by default, with its warm-up
(1 + t) / (10 + t), like the paper's ramp of α): one copy, updated after each optimiser step, checkpointed
and evaluated; so trainer.ema_decay=0 is refused. It runs in eval mode (BatchNorm's running statistics,
copied from the student with the weights), under no_grad: no gradient reaches it and it never moves
except through the EMA update.

USB's code passes the teacher's logits as the student's (its issues #102, #226), so its consistency
loss is identically zero; here the student's own logits are trained. USB's defaults
(config/classic_cv/meanteacher): λ_u 50, ramp-up over 0.4 of training, EMA 0.999, μ 1.
"""

from dataclasses import dataclass

import torch

from ssl_cli.core.errors import UserError
from ssl_cli.core.options import option
from ssl_cli.losses.pseudo_labels import probabilities
from ssl_cli.methods.base import METHODS
from ssl_cli.methods.pimodel import ConsistencyOptions, PiModel


@dataclass
class MeanTeacherOptions(ConsistencyOptions):
    unlabeled_weight: float = option(50.0, "weight of the unlabeled loss once ramped up (λ_u)", low=0)


@METHODS.register("meanteacher")
class MeanTeacher(PiModel):
    """Mean Teacher (Tarvainen & Valpola 2017): MSE between the student and the trainer's EMA teacher."""

    name = "meanteacher"
    Options = MeanTeacherOptions

    def setup(self, model, ema):
        if ema is None:
            raise UserError("method=meanteacher needs trainer.ema_decay > 0: its teacher is the EMA of the "
                            "weights (got trainer.ema_decay=0)")
        self._teacher = [ema]  # a list: not a submodule (the trainer saves and updates the EMA itself)

    def predictions(self, model, labeled, first, second):
        n = labeled.shape[0]
        logits = model(torch.cat([labeled, first])).logits
        teacher = self._teacher[0].model
        if teacher.training:  # evaluation helpers restore the mode they found; keep the teacher evaluating
            teacher.eval()
        with torch.no_grad():
            teacher_logits = teacher(second).logits
        return logits[:n], logits[n:], probabilities(teacher_logits)
