# UniPT baseline of sherl_mdetr_refcoco.py in the authors' MDETR form (UniPT, CVPR 2024; docs/method.md):
# the whole transformer runs frozen; the encoder side (anchor = encoder output, interacting with the outputs
# of encoder layers 0, 2, 4) makes a d = 128 side memory, which the decoder side (anchor = normed decoder
# output; decoder layers 0, 2, 4, each first reading that memory through a crosser) turns into the final
# and three auxiliary head inputs. Trainable: 481,666 side parameters + the heads (231,300) = 712,966.
# UniPT's weight decay is 1e-4 (its authors' code); the rest of the schedule is SHERL's.
_base_ = ['./sherl_mdetr_refcoco.py']
model = dict(tuner=dict(_delete_=True, type='UniPTMDETR', reduction=2, feature_indices=[1, 3, 5], eps=1e-7,
                        per_stack=dict(encoder=dict(role='encoder'), decoder=dict(role='decoder'))))
optim_wrapper = dict(optimizer=dict(weight_decay=1e-4))
