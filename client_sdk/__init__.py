"""flaas client SDK: talks to a coordinator and trains LoRA adapters on the device."""
