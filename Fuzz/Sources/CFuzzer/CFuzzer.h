// libFuzzer's entry for a program with its own `main` (compiler-rt, FuzzerDriver.cpp): SwiftPM
// gives every executable target a `main` of its own, so libFuzzer's is never linked in.
#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerRunDriver(int *_Nonnull argc, char *_Nullable *_Nullable *_Nonnull argv,
                        int (*_Nonnull callback)(const uint8_t *_Nullable data, size_t size));
