export * from './bsl'
